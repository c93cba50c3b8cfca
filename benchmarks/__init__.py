"""Benchmarks: mmkit against the stdlib doing the same job, as medians and ratios.

Run ``python -m benchmarks --help``. Nothing here asserts on timing; goals are reported.
"""
