"""Benchmarks of the platform against the machine's own peak, run by experiments/benchmark.py.

An entry-point layer of its own: it measures the core, Ray Train and the Serve app, so it may import
all of them, and nothing imports it.
"""
