"""Long runs against mmkit: concurrency, resource limits, leak soaks and memcheck.

Run ``python -m stress --help``. Each scenario reports what it checked, with figures, and
the run exits non-zero when any check failed.
"""
