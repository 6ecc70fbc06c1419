"""The ``triton`` lane of ``ddad-edge bench``: scoring files through a real Triton server (the
nvidia-pytriton wheel's tritonserver, ``ddad_score`` model of ``ddad-edge triton``) against the
in-process Scorer on the same files and machine.

The server is started on loopback with a repository written into a scratch folder. For each
number of files per request and each number of concurrent clients (threads, gRPC), a fixed
number of files is sent; per point: throughput (files/s), p50/p95 request latency, batch sizes
(files per execution) the dynamic batcher formed (from the server's statistics), wrong results
(a score differing from the in-process Scorer's by more than 1e-6 relative, or a different
status) and lost files (no record). The reference is ``Scorer.score`` on the same files in
batches of 64 (decode + preprocess + inference + scoring, as the server does), ``reps`` passes
before the servers and ``reps`` after them, the fastest of all (so that a machine whose speed
drifts during the lane does not flatter the server).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_BATCH = 64


def _agree(got: Any, want: Any) -> bool:
    if got.status != want.status:
        return False
    if want.scores is None:
        return got.scores is None
    return all(abs(got.scores[n] - v) <= 1e-6 * abs(v) for n, v in want.scores.items())


STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
"""Per-request stages of Triton's inference statistics (a request's share of its batch's
compute is the whole batch's time: each request of a batch counts it)."""


def _batches(stats: dict[str, Any]) -> dict[int, int]:
    """Executions per batch size in the server's statistics of the model."""
    model = stats["model_stats"][0]
    return {
        int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model.get("batch_stats", [])
    }


def _requests_done(stats: dict[str, Any]) -> int:
    """Requests the model has answered successfully, per the server's statistics."""
    success = stats["model_stats"][0].get("inference_stats", {}).get("success", {})
    return int(success.get("count", 0))  # protobuf's JSON omits zero counts


def _statistics_after(
    client: Any, before: dict[str, Any], requests: int, timeout: float = 10.0
) -> dict[str, Any]:
    """The server's statistics once they count ``requests`` more answered requests than
    ``before``: the backend reports a batch's statistics after its responses have left, so a
    client that has every answer can still read statistics without the last batches."""
    deadline = time.monotonic() + timeout
    while True:
        stats = client.statistics()
        if _requests_done(stats) - _requests_done(before) >= requests:
            return stats
        if time.monotonic() > deadline:
            return stats  # reported as read; the point's batch counts then fall short
        time.sleep(0.05)


def _stage_ms(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Mean milliseconds per request in each of :data:`STAGES` between two statistics."""
    a, b = after["model_stats"][0]["inference_stats"], before["model_stats"][0]["inference_stats"]
    out = {}
    for k in STAGES:
        n = int(a[k].get("count", 0)) - int(b[k].get("count", 0))
        ns = int(a[k].get("ns", 0)) - int(b[k].get("ns", 0))
        out[k] = ns / n / 1e6 if n > 0 else float("nan")
    return out


def _reference(bundle: Path, files: list[str], reps: int) -> tuple[dict[str, Any], list[Any]]:
    """The in-process Scorer's throughput at batch 64 on ``files`` and its records."""
    from ddad_edge.runtime.cpu import physical_cores
    from ddad_edge.runtime.scorer import Scorer

    with Scorer.from_bundle(
        bundle, backend="ort-cpu", precision="fp32", max_batch=REFERENCE_BATCH
    ) as s:
        s.score(files[:REFERENCE_BATCH])  # warm-up
        times, records = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            records = s.score(files)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "batch": REFERENCE_BATCH,
        "threads": physical_cores(),  # the Scorer's default: onnxruntime and decoding
        "n": len(files),
        "seconds": times,
        "throughput": len(files) / best,
    }, records


def _point(
    client: Any, files: list[str], clients: int, per: int, want: dict[str, Any]
) -> dict[str, Any]:
    """Send every file once, ``per`` files per request, from ``clients`` threads; latency per
    request, agreement, losses."""

    def one(start: int) -> tuple[float, list[Any]]:
        t0 = time.perf_counter()
        r = client.score_request(files[start : start + per])
        return time.perf_counter() - t0, r

    stats0 = client.statistics()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(one, range(0, len(files), per)))
    wall = time.perf_counter() - t0
    stats1 = _statistics_after(client, stats0, len(out))
    before, after = _batches(stats0), _batches(stats1)
    lat = np.array([t for t, _ in out]) * 1e3
    records = [r for _, rs in out for r in rs]
    formed = {b: n - before.get(b, 0) for b, n in sorted(after.items()) if n > before.get(b, 0)}
    return {
        "clients": clients,
        "files_per_request": per,
        "files": len(files),
        "requests": len(out),
        "seconds": wall,
        "throughput": len(files) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "wrong": sum(not _agree(r, want[r.source]) for r in records if r.error is None),
        "errors": sum(r.error is not None for r in records),
        "lost": len(files) - len(records),
        "batches": {str(b): n for b, n in formed.items()},
        "mean_batch": sum(b * n for b, n in formed.items()) / max(1, sum(formed.values())),
        "server_ms": _stage_ms(stats0, stats1),
    }


def _settings(config: Path) -> dict[str, Any]:
    """What the lane's ``ddad_score`` config sets: inference, instances, threads per instance
    (as the model decides them on this machine), preferred batch sizes, queue delay."""
    from ddad_edge.export.triton_config import parse_config
    from ddad_edge.runtime.triton_model import cpu_threads

    cfg = parse_config(config)
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    instances = sum(g.count or 1 for g in cfg.instance_group) or 1
    return {
        "inference": params.get("inference", "in-process"),
        "instances": instances,
        "threads_per_instance": cpu_threads(params, instances),
        "preferred_batch_size": list(cfg.dynamic_batching.preferred_batch_size),
        "max_queue_delay_us": int(cfg.dynamic_batching.max_queue_delay_microseconds),
    }


def _serve(
    bundle: Path,
    files: list[str],
    want: dict[str, Any],
    instances: int,
    clients: Sequence[int],
    per_request: Sequence[int],
    protocol: str,
    on: Callable[[str], None],
    queue_delay_us: int | None = None,
) -> list[dict[str, Any]]:
    """One server (``instances`` of ``ddad_score``, the rest as ``ddad-edge triton`` writes it):
    for each number of files per request, its settings, the server's readiness time and one
    point per number of clients.

    Raises:
        ServerError: the server did not start.
    """
    from ddad_edge.export.triton_repo import write_repository
    from ddad_edge.runtime.triton_client import TritonScorer
    from ddad_edge.runtime.triton_server import start_server

    with tempfile.TemporaryDirectory(prefix="ddad-bench-triton-") as tmp:
        on(f"triton lane: repository with {instances} ddad_score instance(s), starting the server")
        delay = {} if queue_delay_us is None else {"queue_delay_us": queue_delay_us}
        repo = write_repository(bundle, Path(tmp) / "repo", instances=instances, **delay).root
        setup = _settings(repo / "ddad_score" / "config.pbtxt")
        t0 = time.perf_counter()
        server = start_server(repo, models=["ddad_score"])
        ready_s = time.perf_counter() - t0
        try:
            url = f"grpc://{server.grpc_url}" if protocol == "grpc" else server.http_url
            out = []
            for per in per_request:
                points = {}
                for c in clients:
                    on(f"triton lane: {instances} instance(s), {per} files/request, {c} clients")
                    client = TritonScorer(url, concurrency=c, files_per_request=per)
                    client.score(files[: 2 * c * per])  # warm-up: connections, first batches
                    points[str(c)] = _point(client, files, c, per, want)
                out.append({"files_per_request": per, "points": points})
        finally:
            server.stop()
    return [{"ready_seconds": ready_s, "model": "ddad_score", **setup, **o} for o in out]


def measure_triton(
    bundle: Path,
    images: Sequence[Path],
    *,
    clients: Sequence[int] = (1, 2, 4, 8, 16),
    instances: Sequence[int] = (1, 2),
    files_per_request: Sequence[int] = (1, 8, 16),
    files: int = 1024,
    queue_delay_us: int | None = None,
    reps: int = 2,
    protocol: str = "grpc",
    on: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Throughput and latency through the server vs the in-process Scorer (module docstring),
    for each number of ``ddad_score`` instances (threads: the cores shared out among them) and
    each number of files per request; ``files`` files per point; ``queue_delay_us``: the
    dynamic batcher's longest wait (None: what ``ddad-edge triton`` writes by default).

    Returns {"available": False, "reason"} when the server cannot start here, else
    {"available": True, "reference": {...}, "servers": [{settings..., "files_per_request",
    "points": {clients: {...}}, "ratio_at_8": server throughput at 8 clients / reference
    throughput}, ...], and "server", "points", "ratio_at_8" of the best configuration at 8
    clients}.
    """
    from ddad_edge.runtime.triton_client import TritonClientError, TritonScorer
    from ddad_edge.runtime.triton_server import ServerError, dist_dir

    try:
        dist_dir()
        TritonScorer(f"{protocol}://127.0.0.1:1")  # imports tritonclient; connects to nothing
    except (ServerError, TritonClientError) as e:
        return {"available": False, "reason": str(e)}
    pool = [str(p) for p in images]
    paths = [pool[i % len(pool)] for i in range(files)]
    on("triton lane: the in-process Scorer at batch 64")
    reference, records = _reference(bundle, paths, reps)
    want = {r.source: r for r in records}
    servers = []
    for n in instances:
        try:
            servers += _serve(
                bundle, paths, want, n, clients, files_per_request, protocol, on, queue_delay_us
            )
        except ServerError as e:
            return {"available": False, "reason": str(e).splitlines()[0]}
    # Measured again after the servers: a machine whose speed drifted during the lane gets the
    # faster of the two as the reference (the conservative ratio).
    on("triton lane: the in-process Scorer at batch 64, again")
    after, _ = _reference(bundle, paths, reps)
    reference["seconds_after"] = after["seconds"]
    reference["throughput"] = max(reference["throughput"], after["throughput"])
    for srv in servers:
        at8 = srv["points"].get("8")
        srv["ratio_at_8"] = None if at8 is None else at8["throughput"] / reference["throughput"]
    best = max(servers, key=lambda s: s["ratio_at_8"] or 0.0)
    return {
        "available": True,
        "protocol": protocol,
        "reference": reference,
        "servers": servers,
        "server": {k: v for k, v in best.items() if k not in ("points", "ratio_at_8")},
        "points": best["points"],
        "ratio_at_8": best["ratio_at_8"],
    }


__all__ = ["measure_triton"]
