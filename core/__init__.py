"""The ground layer: typed settings, the storage seam, image decoding and shared names.

Everything above imports it; it imports no other package of this project
(tests/test_layers.py enforces that).
"""
