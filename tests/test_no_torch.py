"""The appliance runtime never imports torch."""

from __future__ import annotations

import subprocess
import sys


def test_runtime_import_does_not_load_torch() -> None:
    code = (
        "import sys, ddad_edge, ddad_edge.runtime, ddad_edge.runtime.io, ddad_edge.runtime.scores,"
        " ddad_edge.runtime.batch, ddad_edge.runtime.metrics\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
