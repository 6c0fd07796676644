"""Benchmarks for monocloud-async (see benchmarks/README.md)."""
