"""Benchmarks of the fast ops against their references (harness, hardware limits, per-op suites)."""
