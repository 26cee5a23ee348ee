"""The compiled CLIP equals a hand-written one given the same weights, and the full-size spec
has exactly the parameter count of the reference implementation (transformers' CLIPModel)."""

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


@pytest.mark.parametrize("spec,reference,tolerance", [
    ("clip", 151_277_313, 0.0),  # transformers' CLIPModel, default config: exact
    ("llava", 7_063_427_072, 0.01),  # LLaVA-1.5-7B (llava-hf)
    ("blip2", 3_744_679_936, 0.01),  # BLIP-2 OPT-2.7B
])
def test_paper_size_parameter_counts(spec, reference, tolerance):
    stats = compute(*load_class(ROOT / "specs" / f"{spec}.mmg"))
    assert abs(stats.params_total - reference) <= tolerance * reference, stats.params_total


def test_clip_count_matches_transformers_itself():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    with torch.device("meta"):
        model = transformers.CLIPModel(transformers.CLIPConfig())
    theirs = sum(p.numel() for p in model.parameters())
    assert compute(*load_class(ROOT / "specs" / "clip.mmg")).params_total == theirs == 151_277_313
