"""Reproducible measurements of pocketgrid on real peer processes over loopback.

Each module is runnable as ``python -m benchmarks.<name>`` and prints a JSON
summary and one human-readable line.  Numbers are printed, never asserted:
see benchmarks/README.md for what was measured on which machine.
"""
