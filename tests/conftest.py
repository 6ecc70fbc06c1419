"""Shared fixtures: the real-data location and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
KERMANY = SHARED_DATA / "kermany-cxr"


def require_kermany() -> Path:
    """The Kermany folder, or skip the test with the reason."""
    if not (KERMANY / "labels.csv").is_file():
        pytest.skip(f"real data not found at {KERMANY} (../shared/data is absent on this machine)")
    return KERMANY


@pytest.fixture(scope="session")
def kermany() -> Path:
    return require_kermany()
