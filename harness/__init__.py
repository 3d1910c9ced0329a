"""What tests and benchmarks share: real servers on free ports, generated data, fakes.

Tests and benchmarks import helpers from here (tests also get fixtures from
conftest); neither imports the other, and no project package imports this one.
"""
