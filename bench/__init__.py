"""Benchmarks: scripts that measure and report figures (`make bench` -> BENCHMARKS.md)."""
