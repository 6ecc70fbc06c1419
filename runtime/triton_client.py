"""Score files through a Triton server's ``ddad_score`` model with tritonclient (HTTP or gRPC):
the same :class:`~ddad_edge.runtime.ScoreResult` records as local scoring.

``url`` is ``HOST:PORT`` (HTTP), ``http://HOST:PORT`` or ``grpc://HOST:PORT``. Requests go out
from ``concurrency`` threads, one file per request (each thread has its own client object: the
tritonclient clients are not shared between threads); Triton's dynamic batcher groups them.

A file that cannot be read here gets the reason local scoring gives; one the server cannot score
gets the server's reason; a request that fails in transport (server down, timeout) gets
"Triton server ...: <what happened>". Scores are taken only from a complete response of the
expected shape with finite values, so a failure never turns into a score.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ddad_edge.runtime.io import ImageLoadError, _check_file
from ddad_edge.runtime.scorer import ScoreResult
from ddad_edge.runtime.triton_protocol import (
    FILE_INPUT,
    NAME_INPUT,
    SCORE_MODEL,
    SCORE_ORDER,
    SCORES_OUTPUT,
    encode_file,
    encode_name,
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
        outputs = [self._mod.InferRequestedOutput(SCORES_OUTPUT)]
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
            _check_file(source)
            with open(source, "rb") as fh:
                data = fh.read()
        except ImageLoadError as e:
            return ScoreResult(source, error=e.reason)
        except OSError as e:
            return ScoreResult(source, error=f"cannot read file: {e.strerror or e}")
        try:
            response = self._infer(self._inputs(data, source))
        except InferenceServerException as e:
            return ScoreResult(source, error=_server_reason(e, self.url))
        except Exception as e:  # transport errors of gevent / grpc / sockets
            return ScoreResult(source, error=f"Triton server {self.url}: {type(e).__name__}: {e}")
        return _result(source, response.as_numpy(SCORES_OUTPUT), self.url)

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


def _server_reason(e: Any, url: str) -> str:
    """The reason in a per-request error of the model, or a transport failure's description."""
    msg = e.message() if hasattr(e, "message") else str(e)
    status = str(e.status() or "") if hasattr(e, "status") else ""
    # The model answers an input it cannot score with INVALID_ARG (HTTP 400) and the reason;
    # everything else (unavailable, deadline, connection reset, a crashed stub) names the server.
    if status in ("400", "StatusCode.INVALID_ARGUMENT") and msg:
        return msg
    return f"Triton server {url}: {msg or status or type(e).__name__}"


def _result(source: str, scores: np.ndarray | None, url: str) -> ScoreResult:
    if scores is None or scores.shape != (1, len(SCORE_ORDER)) or not np.all(np.isfinite(scores)):
        shape = None if scores is None else scores.shape
        reason = f"Triton server {url}: malformed response (SCORES {shape})"
        return ScoreResult(source, error=reason)
    values = zip(SCORE_ORDER, scores[0], strict=True)
    return ScoreResult(source, scores={n: float(v) for n, v in values})


__all__ = ["PROTOCOLS", "TritonClientError", "TritonScorer", "parse_url"]
