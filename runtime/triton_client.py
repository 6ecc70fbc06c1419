"""Score files through a Triton server's ``ddad_score`` model with tritonclient (HTTP or gRPC):
the same :class:`~ddad_edge.runtime.ScoreResult` records as local scoring.

``url`` is ``HOST:PORT`` (HTTP), ``http://HOST:PORT`` or ``grpc://HOST:PORT``. The files go out
in requests of up to ``files_per_request`` files (fewer when there are not enough files to keep
every thread busy), from ``concurrency`` threads (each thread has its own client object: the
tritonclient clients are not shared between threads); Triton's dynamic batcher merges the
requests into executions of up to the model's ``max_batch_size`` files.

A file that cannot be read here gets the record local scoring gives it and is not sent; the
server's records are taken as they come (``runtime/triton_protocol.py``); every file of a
request that fails at the server or in transport (server down, timeout, crashed model) gets the
error "Triton server URL: <what happened>". A record is used only when its scores, error and
status agree with its rows of the SCORES and ERROR tensors, so a failure never turns into a
score.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ddad_edge.runtime.loaderrors import ImageLoadError
from ddad_edge.runtime.loaderrors import check_file as check_readable
from ddad_edge.runtime.scorer import ScoreResult
from ddad_edge.runtime.triton_protocol import (
    ERROR_OUTPUT,
    FILE_INPUT,
    NAME_INPUT,
    RECORD_OUTPUT,
    SCORE_MODEL,
    SCORES_OUTPUT,
    SIZE_INPUT,
    decode_record,
    decode_texts,
    encode_files,
    encode_names,
    scores_tensor,
)

PROTOCOLS = ("http", "grpc")
TRITONCLIENT_HINT = "tritonclient is not installed: pip install 'ddad-edge[triton]'"


class TritonClientError(RuntimeError):
    """The client cannot be set up (tritonclient missing, bad URL); ``str(e)`` says why."""


def parse_url(url: str) -> tuple[str, str]:
    """``(protocol, "host:port")`` from ``HOST:PORT``, ``http://HOST:PORT`` or
    ``grpc://HOST:PORT``."""
    protocol, sep, rest = url.partition("://")
    if not sep:
        protocol, rest = "http", url
    host, _, port = rest.rstrip("/").rpartition(":")
    if protocol not in PROTOCOLS or not host or not port.isdigit():
        raise TritonClientError(
            f"--triton {url!r}: expected HOST:PORT, http://HOST:PORT or grpc://HOST:PORT"
        )
    return protocol, f"{host}:{port}"


def _module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
    except ImportError as e:
        raise TritonClientError(TRITONCLIENT_HINT) from e
    return mod


class TritonScorer:
    """Score files on a Triton server (see the module docstring).

    Args:
        url: the server, ``HOST:PORT`` (HTTP) or with an ``http://``/``grpc://`` scheme.
        model: the scoring model's name.
        concurrency: requests in flight at once (threads).
        files_per_request: the most files one request carries (at most the model's
            ``max_batch_size``, 64 as ``ddad-edge triton`` writes it by default).
        timeout: seconds one request may take (network and server), then it fails.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str = SCORE_MODEL,
        concurrency: int = 8,
        files_per_request: int = 8,
        timeout: float = 60.0,
    ) -> None:
        if concurrency < 1 or files_per_request < 1:
            raise ValueError("concurrency and files_per_request must be >= 1")
        self.files_per_request = files_per_request
        self.protocol, self.address = parse_url(url)
        self.url = url
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self._mod = _module(self.protocol)
        self._local = threading.local()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._mod.InferenceServerClient(self.address)
            else:
                client = self._mod.InferenceServerClient(
                    self.address, connection_timeout=self.timeout, network_timeout=self.timeout
                )
            self._local.client = client
        return client

    def _inputs(self, data: list[bytes], paths: list[str]) -> list[Any]:
        file, size = encode_files(data)
        out = []
        for name, arr in (
            (FILE_INPUT, file),
            (SIZE_INPUT, size),
            (NAME_INPUT, encode_names(paths)),
        ):
            t = self._mod.InferInput(
                name, list(arr.shape), "INT64" if name == SIZE_INPUT else "UINT8"
            )
            t.set_data_from_numpy(arr)
            out.append(t)
        return out

    def _infer(self, inputs: list[Any]) -> Any:
        names = (SCORES_OUTPUT, ERROR_OUTPUT, RECORD_OUTPUT)
        outputs = [self._mod.InferRequestedOutput(n) for n in names]
        if self.protocol == "grpc":
            return self._client().infer(
                self.model, inputs, outputs=outputs, client_timeout=self.timeout
            )
        return self._client().infer(self.model, inputs, outputs=outputs)

    def score_request(self, paths: Sequence[str | os.PathLike[str]]) -> list[ScoreResult]:
        """Score files in ONE request (at most the model's ``max_batch_size``); one result per
        path, in order; never raises for a bad file or a failed request (see ``error``)."""
        from tritonclient.utils import InferenceServerException

        results: list[ScoreResult | None] = [None] * len(paths)
        sent: list[tuple[int, str, bytes]] = []
        for i, p in enumerate(paths):
            source = os.fspath(p)
            try:
                with open(source, "rb") as fh:
                    sent.append((i, source, fh.read()))
            except OSError as e:
                results[i] = unreadable(source, e)
        if sent:
            sources = [s for _, s, _ in sent]
            try:
                response = self._infer(self._inputs([d for *_, d in sent], sources))
                got = _results(sources, response, self.url)
            except InferenceServerException as e:
                got = self._failed(sources, e.message() or str(e))
            except Exception as e:  # transport errors of gevent / grpc / sockets
                got = self._failed(sources, f"{type(e).__name__}: {e}")
            for (i, _, _), r in zip(sent, got, strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    def _failed(self, sources: list[str], what: str) -> list[ScoreResult]:
        return [ScoreResult(s, error=f"Triton server {self.url}: {what}") for s in sources]

    def score_one(self, path: str | os.PathLike[str]) -> ScoreResult:
        """Score one file in a request of its own (see :meth:`score_request`)."""
        return self.score_request([path])[0]

    def score(
        self,
        paths: Sequence[str | os.PathLike[str]],
        on_item: Callable[[int], None] | None = None,
    ) -> list[ScoreResult]:
        """Score files in requests of up to ``files_per_request`` consecutive files,
        ``concurrency`` requests at a time; one result per path, in order. ``on_item(i)`` is
        called for each path once its request is answered."""
        per = max(1, min(self.files_per_request, math.ceil(len(paths) / self.concurrency)))
        starts = range(0, len(paths), per)

        def one(start: int) -> list[ScoreResult]:
            out = self.score_request(paths[start : start + per])
            for i in range(start, start + len(out)):
                if on_item is not None:
                    on_item(i)
            return out

        if self.concurrency == 1 or len(starts) <= 1:
            return [r for s in starts for r in one(s)]
        with ThreadPoolExecutor(min(self.concurrency, len(starts))) as pool:
            return [r for part in pool.map(one, starts) for r in part]

    def ready(self) -> bool:
        """Whether the server says the scoring model is ready."""
        try:
            return bool(self._client().is_model_ready(self.model))
        except Exception:  # any transport error means "not ready"
            return False

    def statistics(self) -> dict[str, Any]:
        """The server's inference statistics of the scoring model (Triton's JSON form)."""
        stats = self._client().get_inference_statistics(self.model)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            return MessageToDict(stats, preserving_proto_field_name=True)
        return dict(stats)


def unreadable(source: str, exc: OSError) -> ScoreResult:
    """The record local scoring gives a file that cannot be read here: the loader's reason, and
    the input gate's notes when the gate could run (``Scorer._gate_into``)."""
    from ddad_edge.runtime.gate import check_file

    reason = f"cannot read file: {exc.strerror or exc}"
    try:
        notes = list(check_file(source).notes)
    except Exception:  # noqa: BLE001 - the gate cannot read it: the loader's wording stands
        notes = []
    try:
        check_readable(source)
    except ImageLoadError as e:
        reason = e.reason
    return ScoreResult(source, error=reason, notes=notes)


def _results(sources: list[str], response: Any, url: str) -> list[ScoreResult]:
    """The records of a request's files, each checked against its rows of SCORES and ERROR
    (:func:`_checked`); a response without a row per file is malformed for every file."""
    try:
        tensor = response.as_numpy(SCORES_OUTPUT)
        errors = decode_texts(response.as_numpy(ERROR_OUTPUT))
        records = decode_texts(response.as_numpy(RECORD_OUTPUT))
        if not (len(tensor) == len(errors) == len(records) == len(sources)):
            raise ValueError(f"{len(tensor)} rows for {len(sources)} files")
    except (TypeError, ValueError, AttributeError) as e:
        return [
            ScoreResult(s, error=f"Triton server {url}: malformed response ({e})") for s in sources
        ]
    return [
        _checked(s, records[i], tensor[i : i + 1], errors[i], url) for i, s in enumerate(sources)
    ]


def _result(source: str, response: Any, url: str) -> ScoreResult:
    """The record of a one-file request (see :func:`_results`)."""
    return _results([source], response, url)[0]


def _checked(source: str, record: str, tensor: np.ndarray, error: str, url: str) -> ScoreResult:
    """One file's record, checked: its scores must be its SCORES row (FP32 [1, S], NaN when not
    scored) and its error its ERROR text, else it is reported as malformed, never used."""
    try:
        rec = decode_record(record, source)
        r = ScoreResult(
            source,
            scores=rec["scores"],
            error=rec["error"],
            warnings=list(rec["warnings"]),
            reason=rec["reason"],
            notes=list(rec["notes"]),
            flag=rec["flag"],
            operating_point=rec["operating_point"],
        )
        s = r.scores or {}
        # scored: the record's scores in its order (the bundle's); otherwise all NaN
        want = scores_tensor(s, tuple(s)) if s else np.full((1, tensor.shape[-1]), np.nan)
        if tensor.shape != want.shape or not np.array_equal(tensor, want, equal_nan=True):
            raise ValueError(f"SCORES {tensor.tolist()} disagree with the record's {s}")
        if error != (r.error or "").replace("\x00", "\ufffd"):  # as pad_texts sends it
            raise ValueError("ERROR disagrees with the record's error")
        if rec["status"] != r.status or (r.status == "scored") != bool(r.scores):
            raise ValueError(f"status {rec['status']!r} does not fit the record")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return ScoreResult(source, error=f"Triton server {url}: malformed response ({e})")
    return r


__all__ = ["PROTOCOLS", "TritonClientError", "TritonScorer", "parse_url"]
