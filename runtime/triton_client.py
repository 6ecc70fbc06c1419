"""Score files through a Triton server's ``ddad_score`` model with tritonclient (HTTP or gRPC):
the same :class:`~ddad_edge.runtime.ScoreResult` records as local scoring.

``url`` is ``HOST:PORT`` (HTTP), ``http://HOST:PORT`` or ``grpc://HOST:PORT``. Requests go out
from ``concurrency`` threads, one file per request (each thread has its own client object: the
tritonclient clients are not shared between threads); Triton's dynamic batcher groups them.

A file that cannot be read here gets the record local scoring gives it; the server's records are
taken as they come (``runtime/triton_protocol.py``); a request that fails at the server or in
transport (server down, timeout, crashed model) gets the error "Triton server URL: <what
happened>". A record is used only when its scores, error and status agree with the SCORES and
ERROR tensors, so a failure never turns into a score.
"""

from __future__ import annotations

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
    decode_record,
    decode_text,
    encode_file,
    encode_name,
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
        timeout: seconds one request may take (network and server), then it fails.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str = SCORE_MODEL,
        concurrency: int = 8,
        timeout: float = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
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

    def _inputs(self, data: bytes, path: str) -> list[Any]:
        out = []
        for name, arr in ((FILE_INPUT, encode_file(data)), (NAME_INPUT, encode_name(path))):
            t = self._mod.InferInput(name, list(arr.shape), "UINT8")
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

    def score_one(self, path: str | os.PathLike[str]) -> ScoreResult:
        """Score one file; never raises for a bad file or a failed request (see ``error``)."""
        from tritonclient.utils import InferenceServerException

        source = os.fspath(path)
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as e:
            return unreadable(source, e)
        try:
            response = self._infer(self._inputs(data, source))
        except InferenceServerException as e:
            return ScoreResult(source, error=f"Triton server {self.url}: {e.message() or e}")
        except Exception as e:  # transport errors of gevent / grpc / sockets
            return ScoreResult(source, error=f"Triton server {self.url}: {type(e).__name__}: {e}")
        return _result(source, response, self.url)

    def score(
        self,
        paths: Sequence[str | os.PathLike[str]],
        on_item: Callable[[int], None] | None = None,
    ) -> list[ScoreResult]:
        """Score files, ``concurrency`` requests at a time; one result per path, in order."""

        def one(i: int) -> ScoreResult:
            r = self.score_one(paths[i])
            if on_item is not None:
                on_item(i)
            return r

        if self.concurrency == 1 or len(paths) <= 1:
            return [one(i) for i in range(len(paths))]
        with ThreadPoolExecutor(min(self.concurrency, len(paths))) as pool:
            return list(pool.map(one, range(len(paths))))

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


def _result(source: str, response: Any, url: str) -> ScoreResult:
    """The record in a response, checked: its scores must be the SCORES tensor's (NaN when not
    scored), else the response is reported as malformed, never used."""
    try:
        rec = decode_record(response.as_numpy(RECORD_OUTPUT)[0], source)
        tensor = response.as_numpy(SCORES_OUTPUT)
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
        if decode_text(response.as_numpy(ERROR_OUTPUT)[0]) != (r.error or ""):
            raise ValueError("ERROR disagrees with the record's error")
        if rec["status"] != r.status or (r.status == "scored") != bool(r.scores):
            raise ValueError(f"status {rec['status']!r} does not fit the record")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return ScoreResult(source, error=f"Triton server {url}: malformed response ({e})")
    return r


__all__ = ["PROTOCOLS", "TritonClientError", "TritonScorer", "parse_url"]
