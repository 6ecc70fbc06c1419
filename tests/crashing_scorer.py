"""A scorer spec for the node's child processes whose scorer dies (``os.abort``: a real
SIGABRT, as a decoder's C code crashing gives) on any file named ``poison*``. It lives in its own
module so that a spawned child can import it by name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddad_edge.node.scoring import ScorerSpec


class _Crashing:
    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer

    def check(self, path: str) -> Any:
        if Path(path).name.startswith("poison"):
            os.abort()
        return self._scorer.check(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)


@dataclass(frozen=True)
class CrashingSpec(ScorerSpec):
    def open(self) -> Any:
        return _Crashing(super().open())
