"""Golden IR dumps of every zoo spec, at paper size and at a tiny size."""

from __future__ import annotations

import pytest

from mmgraph.compiler import check_file

from conftest import GOLDEN, SPECS, check_golden


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_zoo_spec_checks_clean_and_matches_golden_ir(spec):
    result = check_file(spec)
    assert result.ok, "\n".join(str(d) for d in result.errors)
    assert not result.warnings, [d.message for d in result.warnings]
    dump = "".join(g.dump() for g in result.graphs.values())
    check_golden(GOLDEN / "ir" / f"{spec.stem}.ir.txt", dump)
