"""examples/make_tiny_pretrained.py writes tiny random CLIP-vision and Llama (GQA) folders, and
examples/llava_from_pretrained.mmg checks, loads with their weights (parity with transformers),
and trains on images normalised by the vision folder's processor with the LM folder's tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from mmgraph.build import load_class
from mmgraph.compiler import check_file
from mmgraph.train.preprocess import image_norms, pretrained_tokenizer
from mmgraph.train.run import train

from conftest import ROOT

transformers = pytest.importorskip("transformers", reason="transformers is not installed")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("example")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "make_tiny_pretrained.py"),
                           str(root / "models")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shutil.copy(ROOT / "examples" / "llava_from_pretrained.mmg", root)
    return root


def test_the_example_checks_and_loads_with_parity(example):
    from mmgraph.build import instantiate

    spec = example / "llava_from_pretrained.mmg"
    result = check_file(spec)
    assert result.ok, [str(e) for e in result.errors]
    g = result.graphs["llava_pretrained"]
    assert g.instances["lm"].params.kv_heads == 2 and g.instances["lm"].params.width == 48
    assert g.instances["vision"].pretrained.path == str(example / "models" / "tiny-clip-vision")
    assert image_norms(g, {"image": [3, 32, 32]})["image"].mean[0] == pytest.approx(0.48145466)
    assert pretrained_tokenizer(g) == str(example / "models" / "tiny-llama")

    cls, g = load_class(spec)
    model = instantiate(cls, g).eval()
    clip = transformers.CLIPModel.from_pretrained(example / "models" / "tiny-clip-vision")
    clip = clip.vision_model
    llama = transformers.LlamaForCausalLM.from_pretrained(example / "models" / "tiny-llama")
    image, tokens = torch.randn(1, 3, 32, 32), torch.randint(0, 20, (1, 6))
    with torch.no_grad():
        ours = model.vision(image)
        theirs = clip(pixel_values=image, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert (ours - theirs).abs().max().item() <= 1e-5
        text, _ = model.lm(tokens=tokens)  # logits, hidden states
        assert (text - llama(input_ids=tokens).logits).abs().max().item() <= 1e-4


def test_the_example_trains_with_the_folders_preprocessing(example, tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (90, 90, 90)]):
        Image.new("RGB", (40, 40), color).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "prompt": "what is this ? a red cat"})
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = train(example / "llava_from_pretrained.mmg", data=str(data), out=tmp_path / "run",
                   dims={"T": 8}, quiet=True)
    assert [st["steps"] for st in result["stages"]] == [2, 2]
    assert all(torch.isfinite(torch.tensor(v)) for v in result["final_losses"].values())
