"""The project's own errors: a `ProjectError` says what went wrong in words a user can act on
(a source that does not exist, a model that failed to load, a cluster that is not running).
Standard library only: the preprocessing model ships this file into Triton (core/images.py
raises one), where nothing but the python backend's packages is installed.
"""

from __future__ import annotations


class ProjectError(Exception):
    """An error whose message is the whole story for the person who ran the command."""
