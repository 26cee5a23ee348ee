"""Shared paths and the golden-file helper.

Golden files are compared exactly. After an intended change, regenerate them with
`UPDATE_GOLDEN=1 pytest tests/test_golden.py` and review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.mmg"))
BAD = sorted((ROOT / "tests" / "bad").glob("*.mmg"))
GOLDEN = ROOT / "tests" / "golden"


def check_golden(path: Path, actual: str) -> None:
    """Compare `actual` with the golden file, or write it when UPDATE_GOLDEN=1."""
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path.relative_to(ROOT)}; run with UPDATE_GOLDEN=1")
    expected = path.read_text()
    assert actual == expected, f"{path.relative_to(ROOT)} differs (UPDATE_GOLDEN=1 to accept)"
