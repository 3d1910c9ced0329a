"""Shared core of the pipeline: typed settings, the storage seam and the platform seam."""
