"""Shared paths and the golden-file helper.

Golden files are compared exactly. After an intended change, regenerate them with
`UPDATE_GOLDEN=1 pytest tests/test_golden.py` and review the diff like code.
"""

from __future__ import annotations

import json
import os
import re
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


# ---------------------------------------------------------------- the zoo report
# With MMGRAPH_ZOO_REPORT=path, every test parametrized by a zoo spec's name is recorded
# there (outcome, skip reason, and what it recorded with `record_property`), with each spec's
# header; tools/zoo_table.py writes docs/zoo.md from that file (`make zoo`).
ZOO_REPORT = os.environ.get("MMGRAPH_ZOO_REPORT")
_ZOO_NAMES = {spec.stem for spec in SPECS}
_ZOO_TEST = re.compile(r"(?:.*/)?(test_\w+)\.py::(test_\w+)\[([a-z0-9_]+)(-[\w-]+)?\]$")
_zoo_results: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    m = _ZOO_TEST.match(report.nodeid) if ZOO_REPORT else None
    if not m or m[3] not in _ZOO_NAMES:
        return
    if report.when != "call" and report.outcome == "passed":
        return  # setup and teardown that went well say nothing
    entry = {"outcome": report.outcome, **dict(report.user_properties)}
    if report.skipped and isinstance(report.longrepr, tuple):
        entry["reason"] = report.longrepr[2]
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        entry["error"] = (crash.message if crash else report.longreprtext).splitlines()[0][:300]
    _zoo_results.setdefault(m[3], {})[f"{m[1]}::{m[2]}{m[4] or ''}"] = entry


def pytest_sessionfinish(session, exitstatus):
    if not ZOO_REPORT:
        return
    import zoo_headers

    specs = {}
    for spec in SPECS:
        h = zoo_headers.read(spec)
        specs[spec.stem] = {"paper": h.paper, "seed": h.seed, "fidelity": h.fidelity,
                            "left_out": h.left_out,
                            "published": [vars(p) for p in h.published],
                            "tests": _zoo_results.get(spec.stem, {})}
    out = Path(ZOO_REPORT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"exit_status": int(exitstatus), "specs": specs}, indent=1) + "\n")
