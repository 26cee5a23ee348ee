"""The compiled CLIP equals a hand-written one given the same weights, and the full-size spec
has exactly the parameter count of the reference implementation (transformers' CLIPModel).
(Every spec's published count is checked by tests/test_zoo.py from its `# Published:` line.)"""

from __future__ import annotations

import pytest
import torch

from mmgraph.backends.torch.stats import compute
from mmgraph.build import load, load_class

from conftest import ROOT
from reference.hand_clip import matching
from tiny import TINY

SIZES = TINY["clip"]


def test_compiled_clip_equals_the_hand_written_one():
    torch.manual_seed(0)
    compiled = load(ROOT / "specs" / "clip.mmg", **SIZES).eval()
    reference = matching(compiled, SIZES)
    image = torch.randn(4, 3, SIZES["image_size"], SIZES["image_size"])
    text = torch.randint(0, SIZES["vocab"], (4, SIZES["context"]))
    with torch.no_grad():
        ours, theirs = compiled(image=image, text=text), reference(image, text)
    for key in ("img", "txt"):
        assert (ours[key] - theirs[key]).abs().max().item() <= 1e-6, key


def test_clip_count_matches_transformers_itself():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    with torch.device("meta"):
        model = transformers.CLIPModel(transformers.CLIPConfig())
    theirs = sum(p.numel() for p in model.parameters())
    assert compute(*load_class(ROOT / "specs" / "clip.mmg")).params_total == theirs == 151_277_313
