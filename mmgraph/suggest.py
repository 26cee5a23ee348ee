"""'Did you mean' for a misspelt name, shared by every layer that names what a person got wrong
(spec names, CLI choices, data fields, export targets, runtime inputs)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate a misspelt `name` most likely meant, or None when nothing is close."""
    pool = sorted(set(candidates) - {name})
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = {c.lower(): c for c in pool}
    if name.lower() in lowered:
        return lowered[name.lower()]
    # a prefix either way: `vis` for `vision`, `projection` for `proj`
    prefixed = [c for c in pool if min(len(c), len(name)) >= 3 and
                (c.startswith(name) or name.startswith(c))]
    return min(prefixed, key=lambda c: abs(len(c) - len(name))) if prefixed else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None when nothing is close."""
    match = closest(name, candidates)
    return f"did you mean '{match}'?" if match else None
