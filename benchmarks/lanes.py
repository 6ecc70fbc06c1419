"""The scorers under test ("lanes"), all with the same stages: ``load(paths) -> LoadedBatch``
(decode + preprocess), ``infer(x) -> stats`` (x float32 [N, 1, 64, 64] -> {"mean_a", "std_a",
"mean_b", "std_b"[, "var_b"]}, float32 host arrays), ``scores`` / ``maps`` (image scores [N] /
score maps [N, 1, 64, 64]). Loading and scoring are always the runtime's single implementation;
only ``infer`` differs. ``torch`` (the PyTorch FP32 eager reference on CPU) is what every other
lane is compared with; benchmarks/README.md, "Lanes", lists them all. A lane that cannot run here
raises :class:`LaneUnavailable` with the reason, which the reports print (never dropped).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddad_edge.runtime.batch import LoadedBatch, load_inputs
from ddad_edge.runtime.scores import (
    dual_from_modules,
    maps_from_stats,
    member_stats,
    scores_from_stats,
)


class LaneUnavailable(Exception):
    """This lane cannot run on this machine; ``str(e)`` is the reason."""


@dataclass(frozen=True)
class LaneSpec:
    """What a lane name means.

    family: "torch", "runtime" (the bundle's own graphs) or "variant" (a rewritten graph).
    backend: torch device ("cpu"/"cuda") or Scorer backend ("ort-cpu", "ort-cuda", ...).
    precision: "fp32", "fp16", "int8" or "fp16w" (FP16 weight storage, FP32 compute).
    """

    name: str
    family: str
    backend: str
    precision: str
    cuda_graphs: bool = False

    @property
    def smaller_weights(self) -> bool:
        """A CPU lane whose weights are smaller than FP32 (``variants.choose_variant``)."""
        return self.backend == "ort-cpu" and self.precision in ("int8", "fp16w")


LANE_SPECS: dict[str, LaneSpec] = {
    s.name: s
    for s in (
        LaneSpec("torch", "torch", "cpu", "fp32"),
        *(
            LaneSpec("torch-cuda" + "-fp16" * (p == "fp16") + "-graphs" * g, "torch", "cuda", p, g)
            for g in (False, True)
            for p in ("fp32", "fp16")
        ),
        LaneSpec("ort", "runtime", "ort-cpu", "fp32"),
        LaneSpec("ort-fp16", "runtime", "ort-cpu", "fp16"),
        LaneSpec("ort-int8", "runtime", "ort-cpu", "int8"),
        LaneSpec("ort-fp16w", "variant", "ort-cpu", "fp16w"),
        *(
            LaneSpec(b + "-fp16" * (p == "fp16"), "runtime", b, p)
            for b in ("ort-cuda", "ort-trt", "trt")
            for p in ("fp32", "fp16")
        ),
    )
}
REFERENCE_LANE = "torch"
REDUCED_TOLERANCE = 0.003
TOLERANCES: dict[str, float] = {"fp32": 0.001} | dict.fromkeys(
    ("fp16", "int8", "fp16w"), REDUCED_TOLERANCE
)
"""Largest |ΔAUC| against the reference that ``parity`` allows a lane, by its precision."""
CPU_LANES = tuple(n for n, s in LANE_SPECS.items() if s.backend in ("cpu", "ort-cpu"))
GPU_LANES = tuple(n for n in LANE_SPECS if n not in CPU_LANES)
DEFAULT_LANES = (*CPU_LANES, *GPU_LANES)
LANE_PRECISIONS = ("fp32", "fp16", "int8", "fp16w")


def parse_lanes(text: str, precision: str = "all") -> list[str]:
    """Comma-separated lane names ("default" = every known lane; "cpu", "gpu" = those groups),
    keeping only the lanes of ``precision`` (comma-separated names of LANE_PRECISIONS, or "all").

    Always puts the reference lane first (it is added when missing). ValueError on an unknown
    name or precision, or when the precision leaves no lane but the reference.
    """
    known = set(LANE_PRECISIONS)
    precs = known if precision == "all" else {p.strip() for p in precision.split(",")}
    if not precs or precs - known:
        raise ValueError(
            f"unknown precision in {precision!r}; known: {', '.join(LANE_PRECISIONS)} or all"
        )
    groups = {"default": DEFAULT_LANES, "all": DEFAULT_LANES, "cpu": CPU_LANES, "gpu": GPU_LANES}
    named = [n for t in text.split(",") if t.strip() for n in groups.get(t.strip(), (t.strip(),))]
    if unknown := [n for n in named if n not in LANE_SPECS]:
        raise ValueError(f"unknown backend {unknown[0]!r}; known: {', '.join(LANE_SPECS)}")
    names = [
        n for n in dict.fromkeys(named) if n != REFERENCE_LANE and LANE_SPECS[n].precision in precs
    ]
    if not names and precision != "all":
        raise ValueError(f"no lane of precision {precision} among {text!r} but the reference")
    return [REFERENCE_LANE, *names]


class Lane:
    """Base class: the runtime's loader and scoring; subclasses implement ``infer``."""

    spec: LaneSpec
    graph_path: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def load(self, paths: Sequence[str | os.PathLike[str]]) -> LoadedBatch:
        """Decode + preprocess files -> LoadedBatch (x float32 [n_ok, 1, 64, 64])."""
        return load_inputs(paths)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def maps(self, x: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score maps {rec, intra, inter} float32 [N, 1, 64, 64]."""
        return maps_from_stats(x, stats)

    def scores(self, x: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Image scores {rec, intra, inter} float32 [N]."""
        return scores_from_stats(x, stats)

    def info(self) -> dict[str, Any]:
        """What runs in this lane (for the reports)."""
        return {
            "backend": self.spec.backend,
            "precision": self.spec.precision,
            "graph": str(self.graph_path) if self.graph_path else None,
        }

    def close(self) -> None:
        """Release sessions / device memory."""


# --- PyTorch --------------------------------------------------------------------------------


class TorchLane(Lane):
    """The PyTorch eager reference (CPU FP32: ``ddad_edge.reference.dual_stats``), or the same
    modules on CUDA (FP32 / FP16 autocast, optionally replayed from CUDA graphs)."""

    def __init__(self, spec: LaneSpec, run_dir: Path) -> None:
        import torch

        from ddad_edge.checkpoint import load_module

        self.spec = spec
        self.run_dir = Path(run_dir)
        if spec.backend == "cuda" and not torch.cuda.is_available():
            raise LaneUnavailable(
                "no CUDA device visible to torch "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})"
            )
        self.device = torch.device(spec.backend)
        try:
            self.model_a = load_module(self.run_dir, "A").to(self.device).eval()
            self.model_b = load_module(self.run_dir, "B").to(self.device).eval()
        except (FileNotFoundError, RuntimeError) as e:
            raise LaneUnavailable(f"cannot load the PyTorch run {self.run_dir}: {e}") from e
        from ddad_edge.asr import has_asr, load_asr

        # the run's ASR network (on the CPU, FP32), when it has one: the reference asr score
        self.asr = load_asr(self.run_dir) if has_asr(self.run_dir) else None
        self._graphs: dict[int, tuple[Any, Any, tuple[Any, ...]]] = {}
        self.huge_pages: str | None = None
        if self.device.type == "cpu":
            # The same huge-page advice the runtime gives its onnxruntime weights (what torch's
            # own THP_MEM_ALLOC_ENABLE=1 would do): the comparison is not about page size. The
            # advice is process-wide, so a runtime lane opened later would give it anyway.
            from ddad_edge.runtime import hugepages

            res = hugepages.start_collapse().wait()
            self.huge_pages = res.summary() if res is not None else None

    def info(self) -> dict[str, Any]:
        import torch

        d = super().info() | {"run": str(self.run_dir), "device": str(self.device)}
        d |= {"cuda_graphs": self.spec.cuda_graphs, "autocast_fp16": self.spec.precision == "fp16"}
        d |= {"torch_threads": torch.get_num_threads(), "huge_pages": self.huge_pages}
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d

    def _forward(self, xb: Any) -> tuple[Any, ...]:
        """Both modules on a device batch: (recon_a, recon_b[, logvar_b]), float32."""
        import torch

        amp = self.spec.precision == "fp16"
        # autocast's weight-cast cache must be off inside CUDA graph capture (PyTorch docs)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp, cache_enabled=False):
            oa = self.model_a.forward_shared(xb)
            ob = self.model_b.forward_shared(xb)
        outs = (oa.recon, ob.recon) + ((ob.logvar,) if ob.logvar is not None else ())
        return tuple(o.float() for o in outs)

    def _graphed(self, xb: Any) -> tuple[Any, ...]:
        """``_forward`` replayed from a CUDA graph captured once per batch size."""
        import torch

        n = int(xb.shape[0])
        if n not in self._graphs:
            static_x = xb.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._forward(static_x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs = self._forward(static_x)
            self._graphs[n] = (graph, static_x, outs)
        graph, static_x, outs = self._graphs[n]
        static_x.copy_(xb)
        graph.replay()
        return outs

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The dual statistics (:meth:`_stats`), plus the ASR probability map ``asr`` of the
        run's ASR network (``ddad_edge.asr.asr_probability``) when the run has one."""
        stats = self._stats(x)
        if self.asr is not None:
            from ddad_edge.asr import asr_probability
            from ddad_edge.runtime.scores import ASR_SCORE, maps_from_stats

            stats[ASR_SCORE] = asr_probability(*self.asr, maps_from_stats(x, stats))
        return stats

    def _stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Without CUDA graphs: ``ddad_edge.reference.dual_stats`` itself (under autocast for
        the FP16 lanes), the whole batch in one forward pass. With CUDA graphs: the captured
        forward pass, then the same numpy member statistics as ``dual_stats``."""
        import torch

        if not self.spec.cuda_graphs:
            from ddad_edge.reference import dual_stats

            amp = self.spec.precision == "fp16"
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                return dual_stats(self.model_a, self.model_b, x, batch_size=max(len(x), 1))
        with torch.inference_mode():
            xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            host = [o.cpu().numpy() for o in self._graphed(xb)]  # synchronises the device
        logvar_b = host[2] if len(host) == 3 else None
        return dual_from_modules(member_stats(host[0]), member_stats(host[1], logvar_b))

    def close(self) -> None:
        self._graphs.clear()


# --- The runtime Scorer ---------------------------------------------------------------------


class RuntimeLane(Lane):
    """The deployed runtime: ``ddad_edge.runtime.scorer.Scorer`` on a bundle (or on a variant
    bundle, for the rewritten graphs), through its own ``load``/``infer``/``scores`` stages.

    ``max_batch`` is passed to the Scorer so that a benchmark batch runs as ONE inference call
    (the Scorer would otherwise split it into chunks of its default 64).
    """

    def __init__(
        self,
        spec: LaneSpec,
        bundle: Path,
        *,
        graph_precision: str | None = None,
        max_batch: int = 256,
        intra_op_threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.bundle = Path(bundle)
        try:
            from ddad_edge.runtime.hugepages import for_cpu_backend
            from ddad_edge.runtime.scorer import Scorer
        except ImportError as e:
            raise LaneUnavailable(f"the runtime Scorer is not importable: {e}") from e
        precision = graph_precision or spec.precision
        try:
            self.scorer = Scorer.from_bundle(
                self.bundle,
                backend=spec.backend,
                precision=precision,
                max_batch=max_batch,
                intra_op_threads=intra_op_threads,
                warm_up=for_cpu_backend,  # measured with huge pages, as the torch lane
            )
        except Exception as e:  # noqa: BLE001 - any failure to open a backend is "not available"
            raise LaneUnavailable(f"{spec.backend}/{precision}: {e}") from e
        # timings start once the weights are on huge pages (if they can be)
        self.warm_up = self.scorer.settle()
        backend = next(iter(self.scorer.backends.values()))
        path = getattr(backend, "path", None)
        self.graph_path = (
            Path(path)
            if path and str(path).endswith(".onnx")
            else (self.scorer.bundle.graph_path("dual", self.scorer.precision))
        )

    def info(self) -> dict[str, Any]:
        scorer = {**self.scorer.describe(), "warm_up": self.warm_up}
        return super().info() | {"bundle": str(self.bundle), "scorer": scorer}

    def load(self, paths: Sequence[str | os.PathLike[str]]) -> LoadedBatch:
        return self.scorer.load(list(paths))

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.scorer.infer(x)

    def maps(self, x: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.scorer.scores(x, stats, maps=True).maps

    def scores(self, x: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.scorer.scores(x, stats).image

    def close(self) -> None:
        self.scorer.close()


def open_lane(
    name: str,
    *,
    bundle: Path,
    run_dir: Path | None,
    work_dir: Path | None = None,
    max_batch: int = 256,
    intra_op_threads: int | None = None,
) -> Lane:
    """Open lane ``name`` (a key of LANE_SPECS) of ``bundle`` (the torch lanes: of ``run_dir``);
    a variant lane's bundle is built once under ``work_dir/<precision>``; ``max_batch``: the
    largest batch one Scorer call takes. LaneUnavailable with the reason it cannot run here."""
    spec = LANE_SPECS[name]
    if spec.family == "torch":
        if run_dir is None:
            raise LaneUnavailable("no PyTorch run: the bundle manifest names none; pass --ckpt RUN")
        return TorchLane(spec, run_dir)
    precision = None
    if spec.family == "variant":
        if work_dir is None:
            raise LaneUnavailable(f"no folder to build the {spec.precision} variant in")
        bundle, precision = _variant_bundle(bundle, spec.precision, work_dir), "fp32"
    return RuntimeLane(
        spec,
        bundle,
        graph_precision=precision,
        max_batch=max_batch,
        intra_op_threads=intra_op_threads,
    )


def _variant_bundle(bundle: Path, variant: str, work_dir: Path) -> Path:
    """The variant bundle of ``variant`` under ``work_dir``, built on first use."""
    from ddad_edge.benchmarks.variants import make_variant_bundle
    from ddad_edge.runtime.bundle import MANIFEST

    out = Path(work_dir) / variant
    if (out / MANIFEST).is_file():
        return out
    try:
        return make_variant_bundle(bundle, variant, out)
    except Exception as e:  # noqa: BLE001 - any failure is this lane's reason
        msg = f"building the {variant} variant failed: {type(e).__name__}: {e}"
        raise LaneUnavailable(msg) from e
