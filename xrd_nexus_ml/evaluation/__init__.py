"""Evaluations and benchmarks: every figure the README and docs/benchmarks.md report comes from here.

The one layer that may train (`training`) to measure; nothing below it imports it. Each module
returns a JSON-ready dict; `xrd_nexus_ml.cli` prints it.
"""
