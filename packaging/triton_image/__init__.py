"""Stage 3b, the cluster path: the Triton server image's build context, beside its Dockerfiles.

Importable as `triton_image` (pyproject maps it from packaging/): a Python package
named `packaging` would shadow the PyPI library that pip, setuptools and Airflow import.
"""
