"""Benchmarks of mmkit against the stdlib; the cases live in ``mmkit.bench``."""
