"""Stage 4: serve a model repository version, locally or on Kubernetes."""
