"""Benchmarks of ddad-edge: latency/throughput of every backend against the PyTorch eager
reference with the machine's measured limits beside them (``bench``), and AUC parity of every
backend and precision (``parity``). See benchmarks/README.md.

Modules (one job each): ``machine`` (what the machine is), ``limits`` (matmul peak, memory
bandwidth), ``flops`` (FLOPs and weight bytes from an ONNX graph), ``stats`` (percentiles,
Spearman, paired bootstrap), ``lanes`` (the scorers under test), ``variants`` (smaller-weight
graphs) and ``variant_choice`` (which one is kept), ``latency`` (time-bounded stage timing, batch
sweep), ``paired`` (interleaved speedups), ``endtoend`` (folders of real files), ``coldstart``
(+ ``coldstart_child``: fresh-process start and peak RSS), ``training`` (fused vs separate),
``opprofile`` (time per op class), ``achieved`` (ratios to torch, fraction of the limits),
``parity`` (ΔAUC and friends), ``parity_run`` / ``bench`` (the two runs), ``targets``,
``inputs`` (where input files come from), ``schema`` (the typed bench result), ``report``
(shared JSON/Markdown/PNG writers), ``bench_report``, ``parity_report``, ``machine_report``.

Importing this package imports nothing heavy.
"""
