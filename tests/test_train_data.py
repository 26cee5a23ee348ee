"""The data layer of `mmgraph train`: sources, the spec adapter, tokenizers and batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmgraph.compiler import check_text
from mmgraph.train.batching import batches, collate, len_batches
from mmgraph.train.chat import Conversation
from mmgraph.train.sources import (
    DIGIT_NAMES,
    DataError,
    DigitsSource,
    ImageFolderSource,
    JsonlSource,
    ListSource,
    digits_class_prompts,
    open_source,
)
from mmgraph.train.spec_dataset import SpecDataset
from mmgraph.train.tokenize import ByteTokenizer, HFTokenizer, make_tokenizer

SPEC = """
model m {
  input image: Image[B, 3, 16, 16]
  input caption: Tokens[B, 16]
  input text: Tokens[B, T]
  input label: Labels[B]
  encoder vision: vit(patch=8, width=16, depth=1, heads=2, mlp=32)
  encoder texter: text_transformer(vocab=259, width=16, depth=1, heads=2, mlp=32,
                                   max_len=64, pool="eot")
  img = vision(image)
  a = texter(caption)
  b = texter(text)
  output img, a, b
}
"""


def graph_of(text: str, name: str = "m"):
    result = check_text(text)
    assert result.ok, result.errors
    return result.graphs[name]


def one_input(decl: str) -> str:
    """A spec whose only input is `decl` (an image input, so a vit can consume it)."""
    return f"""
model m {{
  input image: Image[B, 1, 8, 8]
  {decl}
  encoder vision: vit(patch=4, width=16, depth=1, heads=2, mlp=32)
  img = vision(image)
  output img
}}
"""


@pytest.fixture(scope="module")
def graph():
    return graph_of(SPEC)


def png(path, size=(10, 6), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)
    return path


# ------------------------------------------------------------------------------ digits
def test_digits_split_sizes_and_disjoint():
    train, test = open_source("digits", "train"), open_source("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert set(train.index.tolist()).isdisjoint(test.index.tolist())
    assert train.fields == ["image", "text", "label"]


def test_digits_examples_are_real_and_deterministic():
    a, b = DigitsSource("train"), DigitsSource("train")
    for i in (0, 5, 100):
        x, y = a[i], b[i]
        assert x["text"] == y["text"] and x["label"] == y["label"]
        assert np.array_equal(x["image"], y["image"])
        assert x["image"].shape == (8, 8) and x["image"].dtype == np.float32
        assert 0.0 <= x["image"].min() and x["image"].max() <= 1.0
        assert DIGIT_NAMES[x["label"]] in x["text"] or str(x["label"]) in x["text"]
    # several templates are in use
    assert len({a[i]["text"].replace(DIGIT_NAMES[a[i]["label"]], "#")
                .replace(str(a[i]["label"]), "#") for i in range(50)}) >= 4


def test_digits_bad_split():
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        open_source("digits", "val")


def test_zero_shot_prompts():
    prompts = digits_class_prompts()
    assert len(prompts) == 10
    assert prompts[0] == "a photo of the digit zero"
    assert prompts[7] == "a photo of the digit seven"


def test_unknown_dataset_suggests_digits():
    with pytest.raises(DataError, match="did you mean 'digits'"):
        open_source("digts", "train")


# ------------------------------------------------------------------------------ adapter
def test_adapter_digits_to_spec(graph):
    ds = SpecDataset(open_source("digits", "train"), graph, ByteTokenizer(), dims={"T": 40})
    assert ds.mapping == {"image": "image", "caption": "text", "text": "text", "label": "label"}
    x = ds[3]
    assert x["image"].shape == (3, 16, 16) and x["image"].dtype == torch.float32
    assert -1.0 <= x["image"].min() and x["image"].max() <= 1.0
    assert torch.equal(x["image"][0], x["image"][1])  # grey -> RGB copies the channel
    assert x["caption"].shape == (16,) and x["caption"].dtype == torch.long
    assert x["caption"][-1] == ByteTokenizer.eos_id  # 16 is too short: truncated, EOS kept
    ids = x["text"].tolist()
    assert len(ids) == 40 and x["text"].dtype == torch.long
    end = ids.index(ByteTokenizer.eos_id)
    assert ids[0] == ByteTokenizer.bos_id and set(ids[end + 1:]) == {0}  # EOS then PAD
    assert ByteTokenizer().decode(ids) == ds.source[3]["text"]
    assert x["label"].shape == () and x["label"].dtype == torch.long


def test_adapter_short_text_ends_in_eos_then_pad(graph):
    src = ListSource([{"image": np.zeros((8, 8)), "text": "seven", "label": 7}], "mini")
    x = SpecDataset(src, graph, ByteTokenizer(), dims={"T": 8})[0]
    seven = [257] + [b + 1 for b in b"seven"] + [258]
    assert x["caption"].tolist() == seven + [0] * 9  # Tokens[B, 16]
    assert x["text"].tolist() == seven + [0]  # Tokens[B, T] with T = 8


def test_free_token_length_needs_dims(graph):
    with pytest.raises(DataError, match=r"spec input 'text' \(Tokens<text>\[B, T\]\).*--dims T=N"):
        SpecDataset(open_source("digits", "train"), graph, ByteTokenizer())


def test_missing_source_error_text():
    g = graph_of(one_input("input keep: Mask[B, 8]").replace(
        "output img", "output img, keep"))
    with pytest.raises(DataError) as err:
        SpecDataset(open_source("digits", "train"), g, ByteTokenizer())
    assert str(err.value) == ("spec input 'keep' (Mask[B, 8]) has no source in dataset digits; "
                              "its fields are: image, text, label")


def test_missing_source_did_you_mean():
    g = graph_of(one_input("input imag: Tensor[B, 8]").replace("output img", "output img, imag"))
    with pytest.raises(DataError, match=r"no source in dataset digits; its fields are: image, "
                                        r"text, label; did you mean 'image'\?"):
        SpecDataset(open_source("digits", "train"), g, ByteTokenizer())


def test_wrong_field_type_names_input_field_and_types(graph):
    src = ListSource([{"image": "not a picture", "text": "x", "label": 1}], "mini")
    ds = SpecDataset(src, graph, ByteTokenizer(), dims={"T": 8})
    with pytest.raises(DataError) as err:
        ds[0]
    msg = str(err.value)
    assert "mini[0]" in msg and "spec input 'image' (Image<image>[B, 3, 16, 16])" in msg
    assert "field 'image' (str)" in msg and "PIL image" in msg


def test_image_layouts_and_channels():
    g = graph_of(SPEC)
    tok = ByteTokenizer()
    hwc = np.full((20, 10, 3), 255, dtype=np.uint8)
    chw = np.zeros((3, 6, 6), dtype=np.float32)
    rgba = Image.new("RGBA", (5, 5), (0, 255, 0, 10))
    for image, expect in ((hwc, 1.0), (chw, -1.0), (rgba, None)):
        src = ListSource([{"image": image, "text": "t", "label": 0}], "mini")
        x = SpecDataset(src, g, tok, dims={"T": 4})[0]["image"]
        assert x.shape == (3, 16, 16)
        if expect is not None:
            assert torch.allclose(x, torch.full_like(x, expect))
    assert torch.allclose(x[1], torch.ones(16, 16)) and torch.allclose(x[0], -torch.ones(16, 16))


def test_audio_mel_and_exact_name_inputs():
    spec = """
model m {
  input image: Image[B, 1, 8, 8]
  input audio: Audio[B, 100]
  input mel: Mel[B, 16, 20]
  input feats: Vec[B, 4]
  encoder vision: vit(patch=4, width=16, depth=1, heads=2, mlp=32)
  img = vision(image)
  output img, audio, mel, feats
}
"""
    g = graph_of(spec)
    src = ListSource([{"image": np.ones((8, 8)), "audio": np.ones(50, dtype=np.float32),
                       "feats": [1.0, 2.0, 3.0, 4.0]}], "mini")
    ds = SpecDataset(src, g, ByteTokenizer())
    assert ds.mapping["mel"] == "audio"
    x = ds[0]
    assert x["audio"].shape == (100,)
    assert x["audio"][:50].eq(1).all() and x["audio"][50:].eq(0).all()
    assert x["mel"].shape == (16, 20) and x["mel"].dtype == torch.float32
    assert torch.isfinite(x["mel"]).all()
    assert x["feats"].tolist() == [1.0, 2.0, 3.0, 4.0]
    bad = ListSource([{"image": np.ones((8, 8)), "audio": np.ones(5), "feats": [1.0]}], "mini")
    with pytest.raises(DataError, match=r"'feats'.*expected shape \[4\]"):
        SpecDataset(bad, g, ByteTokenizer())[0]


# ------------------------------------------------------------------------------ jsonl
def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_relative_images_and_conversations(tmp_path, graph):
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png", mode="L")
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"image": "img/a.png", "text": "a red thing", "label": 1},
        "",
        {"image": "img/b.png", "label": 2, "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A grey square."}]},
    ])
    # run from elsewhere: paths are relative to the .jsonl file, not the working directory
    src = open_source(str(path), "train")
    assert isinstance(src, JsonlSource) and len(src) == 2 and src.skipped == 0
    # the turns are kept (for the chat template), the <image> placeholder dropped: the picture
    # is the model's prefix
    assert src[1]["text"] == src[1]["conversations"] == Conversation(
        (("user", "What is it?"), ("assistant", "A grey square.")))
    assert src.where(1) == f"{path}:3"
    ds = SpecDataset(src, graph, ByteTokenizer(), dims={"T": 64})
    x = ds[0]
    assert x["image"].shape == (3, 16, 16)
    red = (200 / 255 - 0.5) / 0.5
    assert torch.allclose(x["image"][0], torch.full((16, 16), red), atol=1e-5)
    assert ByteTokenizer().decode(ds[1]["text"]).startswith("A chat between")  # vicuna


def test_jsonl_split_files(tmp_path):
    write_jsonl(tmp_path / "d.train.jsonl", [{"text": "a"}, {"text": "b"}])
    write_jsonl(tmp_path / "d.test.jsonl", [{"text": "c"}])
    assert len(open_source(str(tmp_path / "d.jsonl"), "train")) == 2
    assert len(open_source(str(tmp_path / "d.jsonl"), "test")) == 1
    write_jsonl(tmp_path / "all.jsonl", [{"text": "a"}])
    assert len(open_source(str(tmp_path / "all.jsonl"), "test")) == 1  # no split file: all
    with pytest.raises(DataError, match="not found"):
        open_source(str(tmp_path / "none.jsonl"), "train")


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, '{"text": "broken"', {"text": "z"}])
    with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON"):
        open_source(str(path), "train")


def test_jsonl_missing_image_names_file_and_line(tmp_path):
    png(tmp_path / "img" / "ok.png")
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "img/ok.png"}] * 16 +
                       [{"image": "img/cat.png"}])
    with pytest.raises(DataError) as err:
        open_source(str(path), "train")
    assert str(err.value) == f'{path}:17: image "img/cat.png" not found'


def test_jsonl_undecodable_image_and_audio(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    np.save(tmp_path / "a.npy", np.zeros(4, dtype=np.float32))
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "bad.png"}])
    with pytest.raises(DataError, match=rf'{path}:1: image "bad.png" cannot be decoded'):
        open_source(str(path), "train")
    path = write_jsonl(tmp_path / "e.jsonl", [{"audio": "a.npy"}, {"audio": "a.wav"}])
    with pytest.raises(DataError, match=rf'{path}:2: audio "a.wav" .*only .npy'):
        open_source(str(path), "train")
    src = open_source(str(path), "train", skip_bad=True)
    assert len(src) == 1 and src.skipped == 1
    assert src[0]["audio"].tolist() == [0.0] * 4


def test_jsonl_skip_bad_counts(tmp_path):
    png(tmp_path / "ok.png")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"image": "ok.png", "text": "1"}, "{oops", {"image": "gone.png", "text": "2"},
        "[1, 2]", {"image": "ok.png", "text": "3"}])
    src = open_source(str(path), "train", skip_bad=True)
    assert src.skipped == 3 and len(src) == 2
    assert [src[i]["text"] for i in range(len(src))] == ["1", "3"]
    assert src.where(1) == f"{path}:5"
    assert any(":3:" in p for p in src.problems)


def test_jsonl_all_bad(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["{oops"])
    with pytest.raises(DataError, match=r"no usable examples \(1 bad lines skipped\)"):
        open_source(str(path), "train", skip_bad=True)


# ------------------------------------------------------------------------------ imagefolder
def test_imagefolder_classes_labels_and_captions(tmp_path, graph):
    for cls, n in (("golden_retriever", 2), ("cat", 3)):
        for i in range(n):
            png(tmp_path / "pets" / cls / f"{i}.png")
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("ignored")
    src = open_source(str(tmp_path / "pets"), "train")
    assert isinstance(src, ImageFolderSource)
    assert src.classes == ["cat", "golden_retriever"] and len(src) == 5
    assert [src[i]["label"] for i in range(5)] == [0, 0, 0, 1, 1]
    assert src[4]["text"] == "a photo of a golden retriever"
    x = SpecDataset(src, graph, ByteTokenizer(), dims={"T": 32})[4]
    assert x["image"].shape == (3, 16, 16) and x["label"].item() == 1


def test_imagefolder_split_dirs_and_bad_files(tmp_path):
    png(tmp_path / "train" / "a" / "0.png")
    png(tmp_path / "test" / "a" / "0.png")
    png(tmp_path / "test" / "b" / "0.png")
    assert len(open_source(str(tmp_path), "train")) == 1
    assert open_source(str(tmp_path), "test").classes == ["a", "b"]
    bad = tmp_path / "test" / "b" / "1.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"{bad}: image cannot be decoded"):
        open_source(str(tmp_path), "test")
    src = open_source(str(tmp_path), "test", skip_bad=True)
    assert len(src) == 2 and src.skipped == 1


def test_imagefolder_without_classes(tmp_path):
    png(tmp_path / "x.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderSource(tmp_path)


# ------------------------------------------------------------------------------ tokenizers
def test_byte_tokenizer_round_trip_and_layout():
    tok = make_tokenizer(None)
    assert isinstance(tok, ByteTokenizer) and isinstance(make_tokenizer("byte"), ByteTokenizer)
    assert tok.vocab_size == 259 and tok.pad_id == 0 and tok.eos_id == 258
    text = "héllo wörld ✓"
    ids = tok.encode(text, 64)
    assert len(ids) == 64 and ids[0] == tok.bos_id
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    short = tok.encode("abcdef", 4)
    assert short == [257, 98, 99, 258]
    assert tok.encode("", 3) == [257, 258, 0]


@pytest.mark.parametrize("text,length", [("a", 8), ("the number seven", 8), ("ÿÿÿÿ", 20),
                                         ("\x00", 4), ("x" * 100, 50)])
def test_byte_tokenizer_eos_is_argmax(text, length):
    tok = ByteTokenizer()
    ids = torch.tensor(tok.encode(text, length))
    assert ids.argmax().item() == ids.tolist().index(tok.eos_id)
    assert ids.max().item() == tok.eos_id and ids.min().item() >= tok.pad_id


def make_hf_dir(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "a": 4, "photo": 5, "of": 6,
             "the": 7, "digit": 8, "seven": 9}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")
    fast.save_pretrained(str(path))
    return path


def test_hf_tokenizer_from_local_directory(tmp_path):
    tok = make_tokenizer(str(make_hf_dir(tmp_path / "tok")))
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 10 and tok.pad_id == 0 and tok.eos_id == 3
    assert tok.encode("a photo of the digit seven", 10) == [2, 4, 5, 6, 7, 8, 9, 3, 0, 0]
    assert tok.encode("a photo of the digit seven", 4) == [2, 4, 5, 3]  # EOS kept
    assert tok.encode("a zebra", 5) == [2, 4, 1, 3, 0]
    assert tok.decode([2, 4, 5, 3, 0]) == "a photo"


def test_hf_tokenizer_feeds_the_adapter(tmp_path, graph):
    tok = HFTokenizer(make_hf_dir(tmp_path / "tok"))
    src = ListSource([{"image": np.zeros((8, 8)), "text": "the digit seven", "label": 7}])
    x = SpecDataset(src, graph, tok, dims={"T": 6})[0]
    assert x["text"].tolist() == [2, 7, 8, 9, 3, 0]


def test_hf_tokenizer_bad_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make_tokenizer(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist"):
        make_tokenizer("openai/clip-vit-base-patch32")  # a hub name is never downloaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no tokenizer files"):
        make_tokenizer(str(tmp_path / "empty"))


# ------------------------------------------------------------------------------ batches
def numbered(n: int):
    return [{"x": torch.tensor([i, 2 * i])} for i in range(n)]


def test_len_batches():
    assert len_batches(10, 3, True) == 3 and len_batches(10, 3, False) == 4
    assert len_batches(9, 3, True) == len_batches(9, 3, False) == 3


def test_batches_are_deterministic_and_shuffled():
    data = numbered(23)
    a = [b["x"] for b in batches(data, 4, seed=1, epoch=0)]
    b = [b["x"] for b in batches(data, 4, seed=1, epoch=0)]
    c = [b["x"] for b in batches(data, 4, seed=1, epoch=1)]
    assert len(a) == 5 and all(x.shape == (4, 2) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    seen = torch.cat(a)[:, 0].tolist()
    assert len(set(seen)) == 20 and seen != sorted(seen)
    full = list(batches(data, 4, seed=1, epoch=0, drop_last=False))
    assert len(full) == 6 and full[-1]["x"].shape == (3, 2)
    assert sorted(torch.cat([f["x"] for f in full])[:, 0].tolist()) == list(range(23))


@pytest.mark.parametrize("start", [0, 1, 3, 5, 9])
def test_batches_resume_gives_the_tail(start):
    data = numbered(37)
    full = list(batches(data, 4, seed=7, epoch=2))
    tail = list(batches(data, 4, seed=7, epoch=2, start=start))
    assert len(tail) == len(full) - start
    assert all(torch.equal(x["x"], y["x"]) for x, y in zip(tail, full[start:], strict=True))


def test_batches_of_a_spec_dataset(graph):
    ds = SpecDataset(open_source("digits", "test"), graph, ByteTokenizer(), dims={"T": 40})
    it = batches(ds, 8, seed=0, epoch=0)
    b = next(it)
    assert b["image"].shape == (8, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["caption"].shape == (8, 16) and b["text"].shape == (8, 40)
    assert b["label"].shape == (8,) and b["label"].dtype == torch.long
    assert collate([ds[0], ds[1]])["label"].shape == (2,)
    with pytest.raises(DataError, match="batch size"):
        next(batches(ds, 0, seed=0, epoch=0))
