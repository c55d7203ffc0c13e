"""Benchmarks: one harness (harness.py), one bench_<op>.py per op."""
