"""Benchmarks of ddad-edge: latency/throughput of every backend against the PyTorch eager
reference with the machine's measured limits beside them (``bench``: :mod:`bench`, report
:mod:`bench_report`), and AUC parity of every backend and precision (``parity``: :mod:`parity`,
report :mod:`parity_report`). See benchmarks/README.md. Importing this package imports nothing
heavy.
"""
