"""Benchmarks of ddad-edge: latency/throughput of every backend against the PyTorch eager
reference with the machine's measured limits beside them (``bench``), and AUC parity of every
backend and precision (``parity``). See benchmarks/README.md.

Modules (one job each): ``machine`` (machine description, matmul peak, memory bandwidth),
``flops`` (FLOPs and weight bytes from an ONNX graph), ``stats`` (percentiles, Spearman, paired
bootstrap), ``lanes`` (the scorers under test), ``variants`` (smaller-weight graphs),
``latency`` (time-bounded stage timing, batch sweep), ``endtoend`` (folders of real files),
``coldstart`` (+ ``coldstart_child``: fresh-process start and peak RSS), ``training`` (fused vs
separate), ``parity`` (ΔAUC and friends), ``parity_run`` / ``bench`` (the two runs), ``targets``,
``inputs`` (where input files come from), ``report`` (JSON, Markdown, PNG).

Importing this package imports nothing heavy.
"""
