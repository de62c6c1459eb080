"""Benchmarks: each script prints its figures and writes a JSON record to bench/results/."""
