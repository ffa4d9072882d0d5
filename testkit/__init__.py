"""Tooling shared by the test suite and the benchmarks: the fake LLM server and small network helpers."""
