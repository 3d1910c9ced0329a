"""Stage 3: the Triton model repository for the dogs_cats classifier.

`config.py` writes every config.pbtxt (reference copies in `reference/`),
`repository.py` adds a trained model as the next numbered version beside its
labels, the python-backend models (`python_backend/`, `preprocess/`) and the
JPEG ensemble.
"""
