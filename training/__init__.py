"""Stage 1 (staging) and stage 2 (training + export) of the dogs_cats pipeline.

Importing this package does not import TensorFlow: staging runs on an
Airflow worker that installs only the light extras.
"""
