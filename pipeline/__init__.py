"""The orchestration layer: a run's typed plan, the platform seam and its pods, the demo.

Only the DAGs and command-line entry points import it; the stage packages
below never do (tests/test_layers.py enforces that).
"""
