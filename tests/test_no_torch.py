"""The runtime boundary: the appliance runtime and the CLI import nothing from the training side,
torch, onnx or matplotlib; `score --heatmaps` runs with those unimportable; commands that need
the train extra say which extra to install, in one line, exit 2.

The subprocesses put a folder first on PYTHONPATH whose ``torch``, ``onnx`` and ``matplotlib``
packages raise ImportError, so these tests mean the same in a full and a runtime-only install.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ddad_edge.runtime

BLOCKED = ("torch", "onnx", "matplotlib")
TRAINING_SIDE = ("models", "train", "plots", "checkpoint", "reference", "evaluate", "export")


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a subprocess in which importing torch, onnx or matplotlib fails."""
    root = tmp_path_factory.mktemp("blocked")
    for name in BLOCKED:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked in this test')\n"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "200"  # one-line messages stay on one line
    return env


def run(env: dict[str, str], *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "ddad_edge.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_no_runtime_source_imports_the_training_side() -> None:
    """Every import statement in the runtime's source, lazy ones inside functions included."""
    bad = []
    for path in sorted(Path(ddad_edge.runtime.__path__[0]).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] in BLOCKED or (parts[0] == "ddad_edge" and parts[1:2] != ["runtime"]):
                    bad.append(f"{path.name}:{node.lineno} imports {name}")
    assert not bad, bad


def test_every_runtime_module_and_the_cli_import_without_training_side(
    blocked_env: dict[str, str],
) -> None:
    mods = sorted(
        m.name for m in pkgutil.walk_packages(ddad_edge.runtime.__path__, "ddad_edge.runtime.")
    )
    assert "ddad_edge.runtime.heatmaps" in mods and "ddad_edge.runtime.scorer" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r} + ['ddad_edge.cli']:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED!r}\n"
        f"             or m.split('.')[:2] in [['ddad_edge', t] for t in {TRAINING_SIDE!r}])\n"
        "print(','.join(bad) or 'clean')\n"
    )
    out = run(blocked_env, code=code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


TRAINING_COMMANDS = [
    ["train", "--split", "s.json", "-o", "run"],
    ["eval", "run", "--split", "s.json"],
    ["demo", "-o", "demo-out"],
    ["export", "--ckpt", "run", "-o", "bundle"],
    ["bench", "bundle"],
    ["parity", "bundle", "--split", "s.json"],
]


def test_training_commands_name_the_extra(blocked_env: dict[str, str], tmp_path: Path) -> None:
    code = (
        "import json\n"
        "from typer.testing import CliRunner\n"
        "from ddad_edge.cli import app\n"
        f"for args in {TRAINING_COMMANDS!r}:\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    print(json.dumps([args[0], r.exit_code, r.stderr, repr(r.exception)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=blocked_env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r[0] for r in results] == [a[0] for a in TRAINING_COMMANDS]
    for command, code_, stderr, exc in results:
        lines = stderr.strip().splitlines()
        assert code_ == 2 and len(lines) == 1, (command, stderr, exc)
        assert lines[0].startswith(f"error: `ddad-edge {command}` needs "), lines
        assert lines[0].endswith("pip install 'ddad-edge[train]'"), lines
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_score_with_heatmaps_without_training_side(
    blocked_env: dict[str, str], bundle: Path, good_images: list[Path], tmp_path: Path
) -> None:
    heat = tmp_path / "heat"
    files = [str(p) for p in good_images[:2]]
    out = run(blocked_env, "score", str(bundle), *files, "--json", "--heatmaps", str(heat))
    assert out.returncode == 0, out.stderr
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["source"] for r in recs] == files
    for r in recs:
        assert r["error"] is None and Path(r["heatmap"]).is_file()
        assert Path(r["heatmap"]).parent == heat
