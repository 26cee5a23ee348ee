"""What a zoo spec's header comment says about itself, read the same way by the tests and by
tools/zoo_table.py (which writes docs/zoo.md from a zoo run):

    # <System> (<authors>, <year>) — "<title>".      the paper (first sentence)
    # Seed: <N>                                      its number in the seed list (SEEDS.md)
    # Fidelity: faithful | partial — <what is left out>
    # Published: total|trainable <count> ±<tolerance>% — <source>
    # tiny: NAME=VALUE ...                           overrides for the tiny size
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from mmgraph.compiler import parse_override

PUBLISHED = re.compile(r"# Published: (total|trainable) ([0-9_]+) ±([0-9.]+)% — (.+)")
FIDELITY = re.compile(r"# Fidelity: (faithful|partial)(?: — (.+))?$")


@dataclass(frozen=True)
class Published:
    kind: str  # "total" or "trainable" (of the first train stage)
    count: int
    tolerance: float  # a fraction: 0.01 is 1%
    source: str


@dataclass
class Header:
    paper: str = ""
    seed: int | None = None  # its number among the 78 seed systems; None: not a seed
    fidelity: str | None = None  # "faithful" or "partial"
    left_out: str = ""
    published: list[Published] = field(default_factory=list)
    tiny: dict | None = None  # None: no `# tiny:` line


def _paper(comments: list[str]) -> str:
    """The header's first sentence: its first paragraph up to the end of the quoted title and
    the rest of that sentence (or the whole first line when nothing is quoted)."""
    paragraph = []
    for line in comments:
        text = line.removeprefix("#").strip()
        if not text:
            break
        paragraph.append(text)
    joined = " ".join(paragraph)
    m = re.match(r'[^"]*"[^"]*"(?:al\.|[^.])*\.?', joined)
    return m[0].strip() if m else (paragraph[0] if paragraph else "")


@functools.cache  # tiny.py, test_zoo.py and conftest.py each read every spec's header
def read(spec: Path) -> Header:
    """The header of one spec; malformed Fidelity/Published lines raise ValueError naming it.
    Read once per path and shared by every caller, so callers must not change it."""
    lines = spec.read_text(encoding="utf-8").splitlines()
    comments = []
    for line in lines:
        if not line.startswith("#"):
            break
        comments.append(line)
    h = Header(paper=_paper(comments))
    for number, line in enumerate(lines, 1):
        where = f"{spec.name}:{number}"
        if line.startswith("# tiny:"):
            h.tiny = h.tiny or {}
            for item in line.removeprefix("# tiny:").split():
                name, value = parse_override(item)
                h.tiny[name] = value
        elif line.startswith("# Seed:"):
            h.seed = int(line.removeprefix("# Seed:"))
        elif line.startswith("# Fidelity:"):
            m = FIDELITY.match(line)
            if not m or (m[1] == "partial") != bool(m[2]):
                raise ValueError(f"{where}: write '# Fidelity: faithful' or '# Fidelity: "
                                 f"partial — <what is left out>', not {line!r}")
            h.fidelity, h.left_out = m[1], m[2] or ""
        elif line.startswith("# Published:"):
            m = PUBLISHED.match(line)
            if not m:
                raise ValueError(f"{where}: write '# Published: total|trainable <count> "
                                 f"±<tolerance>% — <source>', not {line!r}")
            h.published.append(Published(m[1], int(m[2].replace("_", "")),
                                         float(m[3]) / 100, m[4]))
    return h
