"""The corpus of bad specs: each file says which diagnostics it must produce.

Every file in tests/bad/ starts with one or more expectation lines:

    # expect: E201 12:19 unknown component 'vti'

meaning: an error with code E201 at line 12, column 19, whose message is exactly the text
after the position. The checker must report exactly these errors (warnings are not
counted), and never crash. The rendered text of all diagnostics is also kept as a golden
file, so that a change to carets, hints or notes shows up in review.
"""

from __future__ import annotations

import re

import pytest

from mmgraph.compiler import check_file
from mmgraph.lang.diagnostics import render_all

from conftest import BAD, GOLDEN, ROOT, check_golden

EXPECT = re.compile(r"^# expect: (E\d{3}) (\d+):(\d+) (.+)$")


def expectations(path):
    out = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if m:
            out.append((m[1], int(m[2]), int(m[3]), m[4]))
    return out


def test_corpus_is_large_enough():
    assert len(BAD) >= 40, f"only {len(BAD)} bad specs in tests/bad/"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_spec(path):
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    result = check_file(path)
    got = [(d.code, d.span.line if d.span else 0, d.span.col if d.span else 0, d.message)
           for d in result.errors]
    assert got == expected, "\n" + render_all(result.errors)
    assert all(d.code != "E901" for d in result.diagnostics)
    rendered = render_all(result.diagnostics).replace(str(ROOT) + "/", "")
    check_golden(GOLDEN / "diagnostics" / f"{path.stem}.txt", rendered + "\n")
