"""Export of trained DDAD runs to deployment bundles (ONNX FP32/FP16 graphs, golden vectors,
manifest) and TensorRT engine builds.

Modules (one job each): ``fold`` (BatchNorm folding, weight extraction), ``onnx_graph`` (graph
building), ``fp16`` (CPU checks of the FP16 graph), ``sources`` (parity images), ``parity`` (the
gate against the PyTorch reference), ``bundle`` (writing the bundle), ``trt_build`` (TensorRT).
Importing this package imports nothing heavy; torch/onnx are imported by the modules that need
them.
"""
