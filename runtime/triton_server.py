"""Start the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships (Triton 2.51, Python
backend only) on a model repository written by ``ddad-edge triton``, and stop it.

Two things this build needs that a stock Triton container does not:

* The Python backend's stub (``triton_python_backend_stub``) comes per Python version under
  ``pytriton/tritonserver/python_backend_stubs/X.Y``; Triton looks for it next to the backend's
  library. :func:`backend_directory` lays out a backend folder of links: the backend library and
  utilities from the wheel, and the stub for the running interpreter's version.
* The stub links ``libpython3.X.so.1.0``. The dynamic loader may find the distribution's
  library (e.g. 3.11.2) while the interpreter's standard library is another patch release (e.g.
  3.11.7); the model then fails to initialise (``'_thread.RLock' object has no attribute
  '_recursion_count'``). :func:`server_env` puts the interpreter's own ``LIBDIR`` first on
  ``LD_LIBRARY_PATH``, and its ``bin`` folder first on ``PATH`` so that the stub's embedded
  interpreter resolves to this (virtual) environment and imports the same ``ddad_edge``.

The server listens on 127.0.0.1 only; ports default to free ones.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PYTRITON_HINT = "install the server binary: pip install --no-deps nvidia-pytriton"
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


class ServerError(RuntimeError):
    """The Triton server cannot be found, started or reached; ``str(e)`` says why."""


def dist_dir() -> Path:
    """The wheel's ``pytriton/tritonserver`` folder (bin/, backends/, python_backend_stubs/).

    Raises:
        ServerError: nvidia-pytriton is not installed (with the install hint).
    """
    spec = importlib.util.find_spec("pytriton")  # locate only: importing it needs numpy<2 deps
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"nvidia-pytriton is not installed: {PYTRITON_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"{root}: no bin/tritonserver in this nvidia-pytriton; {PYTRITON_HINT}")
    return root


def python_libdir() -> Path:
    """The folder holding this interpreter's ``libpython3.X.so.1.0``.

    Raises:
        ServerError: the interpreter was built without a shared libpython (the stub needs one).
    """
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    if not (libdir / name).is_file():
        raise ServerError(
            f"{libdir / name}: not found; the Python backend's stub needs the shared libpython "
            "of this interpreter (build Python with --enable-shared)"
        )
    return libdir


def backend_directory(where: Path) -> Path:
    """A Triton backend folder under ``where``: ``python/`` with links to the wheel's Python
    backend and the stub matching this interpreter's version. Returns the folder to pass as
    ``--backend-directory``."""
    dist = dist_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"{stub}: this nvidia-pytriton has no Python backend stub for {version}")
    out = where / "backends"
    (out / "python").mkdir(parents=True, exist_ok=True)
    for src in [dist / "backends" / "python" / f for f in BACKEND_FILES] + [stub]:
        link = out / "python" / src.name
        if not link.exists():
            link.symlink_to(src)
    return out


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ``base`` (default ``os.environ``) with this interpreter's
    LIBDIR first on LD_LIBRARY_PATH (then the wheel's bundled libraries) and its ``bin`` first
    on PATH (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libs = [str(python_libdir()), str(dist_dir().parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS's choice)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TritonServer:
    """A running ``tritonserver`` process on 127.0.0.1 (see :func:`start_server`)."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    workdir: Path
    _own_workdir: bool = field(default=False, repr=False)

    @property
    def http_url(self) -> str:
        """``127.0.0.1:PORT`` of the HTTP/REST endpoint."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:PORT`` of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 (server and every loaded model ready)."""
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        """Poll readiness for up to ``timeout`` seconds.

        Raises:
            ServerError: the process exited, or was not ready in time (with the log's tail).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(
                    f"tritonserver exited with status {self.process.returncode} before it was "
                    f"ready; log {self.log_path}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise ServerError(
            f"tritonserver not ready after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL the server and its stub processes (it runs in its own process group)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (Triton then drains in-flight requests), SIGKILL after ``timeout`` seconds;
        remove the working folder when :func:`start_server` made it. Returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # Stub processes left behind by a killed server belong to its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._own_workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        return int(self.process.returncode or 0)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_command(
    repository: Path,
    backends: Path,
    ports: tuple[int, int, int],
    models: Sequence[str] | None,
    exit_timeout: int,
) -> list[str]:
    """The tritonserver command line (loopback only; explicit model control when ``models``)."""
    http, grpc, metrics = ports
    cmd = [
        str(dist_dir() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--cache-directory={dist_dir() / 'caches'}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        f"--exit-timeout-secs={exit_timeout}",
        "--log-verbose=0",
    ]
    if models is not None:
        cmd.append("--model-control-mode=explicit")
        cmd += [f"--load-model={m}" for m in models]
    return cmd


def start_server(
    repository: str | os.PathLike[str],
    *,
    models: Sequence[str] | None = None,
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
    workdir: str | os.PathLike[str] | None = None,
    ready_timeout: float = 120.0,
    exit_timeout: int = 5,
) -> TritonServer:
    """Start the wheel's tritonserver on ``repository`` and wait until it is ready.

    Args:
        repository: a model repository (``ddad-edge triton``).
        models: load only these models (explicit model control); None loads every model.
            This build can load Python-backend models only.
        http_port, grpc_port, metrics_port: loopback ports; 0 picks free ones.
        workdir: folder for the backend links and ``tritonserver.log`` (default: a temporary
            folder removed by :meth:`TritonServer.stop`).
        ready_timeout: seconds to wait for readiness.
        exit_timeout: seconds Triton waits for in-flight requests when stopped.

    Raises:
        ServerError: binary or stub missing, server exited, or not ready in time.
    """
    repo = Path(repository).resolve()
    if not repo.is_dir():
        raise ServerError(f"{repo}: no such model repository (write one with `ddad-edge triton`)")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="ddad-triton-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    ports = tuple(p or free_port() for p in (http_port, grpc_port, metrics_port))
    cmd = server_command(repo, backend_directory(work), ports, models, exit_timeout)
    log_path = work / "tritonserver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(),
            start_new_session=True,  # own process group: stop() reaches the stub processes too
        )
    server = TritonServer(proc, *ports, log_path, work, own)
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        server.stop(timeout=5)
        raise
    return server


__all__ = [
    "ServerError",
    "TritonServer",
    "backend_directory",
    "dist_dir",
    "free_port",
    "python_libdir",
    "server_env",
    "start_server",
]
