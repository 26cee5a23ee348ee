"""Preprocessing from a pretrained part's folder: images feeding a part whose folder has a
preprocessor_config.json (CLIPImageProcessor) use its mean/std and must have its size; text
feeding a part whose folder has tokenizer files uses that tokenizer unless --tokenizer is given.

The folders are tiny: a CLIPConfig, a CLIPImageProcessor and a word-level tokenizer written by
hand, all saved offline."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from mmgraph.compiler import check_text
from mmgraph.train.preprocess import image_norms, pretrained_tokenizer
from mmgraph.train.sources import DataError, ListSource
from mmgraph.train.spec_dataset import SpecDataset
from mmgraph.train.tokenize import ByteTokenizer, HFTokenizer, make_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "thing", "blue", "cat"]


def make_clip(folder: Path, crop: int = 32) -> Path:
    transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, vocab_size=100, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, image_size=32, patch_size=8),
        projection_dim=16).save_pretrained(folder)
    transformers.CLIPImageProcessor(image_mean=MEAN, image_std=STD, size={"shortest_edge": crop},
                                    crop_size={"height": crop, "width": crop}
                                    ).save_pretrained(folder)
    return folder


def add_tokenizer(folder: Path) -> Path:
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def graph(folder: Path, size: int = 32, text: bool = False):
    spec = f"""\
    model m {{
      input image: Image[B, 3, {size}, {size}]
      {'input text: Tokens[B, 16]' if text else ''}
      encoder vision: vit(pool="cls") pretrained("{folder}", part="vision_model")
      {'encoder texter: text_transformer(pool="eot") pretrained("' + str(folder) +
       '", part="text_model")' if text else ''}
      v = vision(image)
      {'t = texter(text)' if text else ''}
      output v{', t' if text else ''}
    }}
    """
    result = check_text(textwrap.dedent(spec))
    assert result.ok, [str(e) for e in result.errors]
    return result.graphs["m"]


def red_image(size: int = 32):
    img = torch.zeros(size, size, 3, dtype=torch.uint8)
    img[..., 0] = 200
    img[..., 1] = 100
    return img.numpy()


def test_images_use_the_processors_mean_and_std(tmp_path):
    g = graph(make_clip(tmp_path / "clip"))
    ds = SpecDataset(ListSource([{"image": red_image()}]), g, ByteTokenizer())
    x = ds[0]["image"]
    assert x.shape == (3, 32, 32)
    want = [(v / 255 - m) / s for v, m, s in zip((200, 100, 0), MEAN, STD, strict=True)]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((32, 32), want[c]), atol=1e-5), (c, x[c, 0, 0])
    assert ds.norms["image"].source == str(tmp_path / "clip" / "preprocessor_config.json")


def test_without_a_processor_the_default_half_mean_and_std(tmp_path):
    folder = make_clip(tmp_path / "clip")
    (folder / "preprocessor_config.json").unlink()
    g = graph(folder)
    x = SpecDataset(ListSource([{"image": red_image()}]), g, ByteTokenizer())[0]["image"]
    assert torch.allclose(x[0], torch.full((32, 32), (200 / 255 - 0.5) / 0.5), atol=1e-5)


def test_a_size_that_disagrees_is_refused(tmp_path):
    g = graph(make_clip(tmp_path / "clip", crop=64))
    with pytest.raises(DataError, match=r"32x32 images, but 'vision' was pretrained on 64x64"):
        SpecDataset(ListSource([{"image": red_image()}]), g, ByteTokenizer())


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot be read as JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"image_mean": [0.5, 0.5], "image_std": [0.5] * 3}), "image_mean has 2 values"),
    (" " * (1 << 20) + "{}", "too large"),
])
def test_a_bad_processor_file_is_named(tmp_path, content, message):
    folder = make_clip(tmp_path / "clip")
    (folder / "preprocessor_config.json").write_text(content)
    g = graph(folder)
    with pytest.raises(DataError, match=message) as info:
        image_norms(g, {"image": [3, 32, 32]})
    assert "preprocessor_config.json" in str(info.value)


def test_the_text_parts_tokenizer_is_used_unless_one_is_given(tmp_path):
    folder = add_tokenizer(make_clip(tmp_path / "clip"))
    g = graph(folder, text=True)
    assert pretrained_tokenizer(g) == str(folder)
    tok = make_tokenizer(None or pretrained_tokenizer(g))
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == len(WORDS)
    ds = SpecDataset(ListSource([{"image": red_image(), "text": "a red cat"}]), g, tok)
    ids = ds[0]["text"].tolist()
    assert ids[:5] == [WORDS.index(w) for w in ("[CLS]", "a", "red", "cat", "[SEP]")]
    # without tokenizer files in the folder: none (the byte tokenizer is the default)
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for f in bare.iterdir():
        if f.name not in ("config.json", "preprocessor_config.json"):
            f.unlink()
    assert pretrained_tokenizer(graph(bare, text=True)) is None
