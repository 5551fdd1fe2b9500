"""Benchmarks: run with `make bench`; each prints figures and a ratio against a baseline."""
