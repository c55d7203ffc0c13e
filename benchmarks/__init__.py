"""Benchmarks: the op harness (harness_ops.py) with one bench_<op>.py per op, the method-step harness
(harness_steps.py) with one step_<name>.py per method family, and what both share (harness.py)."""
