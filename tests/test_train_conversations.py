"""LLaVA-style conversations: a chat template renders them, the answer tokens (and only they)
are the next_token loss's targets, cuts are counted (or refused), and a tokenizer larger than
the spec's vocabulary is refused before training. Also validation losses, eval's split, the
picture and TensorBoard."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.build import load_class
from mmgraph.cli import main
from mmgraph.compiler import check_text
from mmgraph.train.chat import (
    BUILTIN_TEMPLATES,
    ChatError,
    ChatTemplate,
    parse_conversation,
    render_prompt,
)
from mmgraph.train.plots import loss_png, read_series
from mmgraph.train.run import train
from mmgraph.train.sources import DataError, ListSource, open_source
from mmgraph.train.spec_dataset import SpecDataset, VocabError
from mmgraph.train.tokenize import ByteTokenizer, HFTokenizer

CHAT_LM = """
model chat_lm {
  input text: Tokens[B, T]
  input answer: Mask[B, T]
  decoder lm: causal_lm(vocab=259, width=16, depth=1, heads=2, max_len=256)
  logits = lm(tokens=text)
  output logits
  loss lm_loss = next_token(logits, text, answer)
  train { batch_size = 4; lr = 0.01; steps = 4; schedule = "constant"; chat_template = "chatml" }
}
"""

BARE_LM = CHAT_LM.replace("input answer: Mask[B, T]\n", "").replace(", answer)", ")")


def graph_of(text: str):
    result = check_text(text)
    assert result.ok, result.errors
    return next(iter(result.graphs.values()))


def conversation(question: str, answer: str, *more) -> list[dict]:
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    for q, a in zip(more[::2], more[1::2], strict=True):
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def target_text(ids: torch.Tensor, targets: torch.Tensor) -> str:
    return ByteTokenizer().decode([i for i, t in zip(ids.tolist(), targets.tolist()) if t]
                                  + [ByteTokenizer.eos_id])


# ------------------------------------------------------------------ templates and targets

def test_chatml_targets_are_the_answers_with_their_end_of_turn():
    conv = parse_conversation(conversation("What is it?", "A cat.", "And now?", "A dog."))
    chat = ChatTemplate("chatml", ByteTokenizer())
    enc = chat.encode(conv)
    ids, targets = torch.tensor(enc.ids), torch.tensor(enc.targets)
    assert target_text(ids, targets) == "A cat.<|im_end|>\nA dog.<|im_end|>\n"
    text = ByteTokenizer().decode(enc.ids)
    assert text.startswith("<|im_start|>user\nWhat is it?<|im_end|>")  # <image> dropped


def test_vicuna_targets_include_eos_and_never_the_system_text():
    conv = parse_conversation([{"from": "system", "value": "Be brief."}] +
                              conversation("Colour?", "Red."))
    enc = ChatTemplate("vicuna", ByteTokenizer()).encode(conv)
    assert enc.ids[0] == ByteTokenizer.bos_id
    chosen = [i for i, t in zip(enc.ids, enc.targets, strict=True) if t]
    assert chosen[-1] == ByteTokenizer.eos_id  # the model learns to stop
    assert ByteTokenizer().decode(chosen[:-1]) == " Red."
    assert ByteTokenizer().decode(enc.ids) == "Be brief. USER: Colour? ASSISTANT: Red."


@pytest.mark.parametrize("template", [None, "chatml", "plain"])
def test_a_generation_prompt_is_the_trained_text_up_to_the_answer(template):
    tok = ByteTokenizer()
    enc = ChatTemplate(template, tok).encode(parse_conversation(conversation("Why?", "Because.")))
    prompt = tok.ids(render_prompt(tok, "Why?", template))[:-1]  # generate drops the EOS
    assert prompt == enc.ids[:enc.targets.index(True)]


def test_a_jinja_template_from_the_spec_and_bad_ones():
    template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant] {% endif %}")
    enc = ChatTemplate(template, ByteTokenizer()).encode(parse_conversation(
        conversation("2+2?", "4")))
    assert ByteTokenizer().decode(enc.ids) == "[user] 2+2?\n[assistant] 4\n"
    assert target_text(torch.tensor(enc.ids), torch.tensor(enc.targets)) == "4\n"
    with pytest.raises(ChatError, match="'chatmlx' is neither a built-in.*did you mean 'chatml'"):
        ChatTemplate("chatmlx", ByteTokenizer())
    with pytest.raises(ChatError, match="jinja2 cannot read it"):
        ChatTemplate("{% for m in messages %}", ByteTokenizer())


@pytest.mark.parametrize("turns,why", [
    ("hello", "must be a list"), ([], "at least one"), ([{"from": "bot", "value": "x"}],
                                                         '"from" is "bot"; expected one of'),
    ([{"from": "human"}], 'no "value" string'), (["x"], "turn 1 is a str")])
def test_bad_conversations_say_what_is_wrong(turns, why):
    with pytest.raises(ValueError, match=why):
        parse_conversation(turns)


def make_chat_tokenizer(path):
    """A fast WordLevel tokenizer with ChatML special tokens and a chat template of its own."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "what", "is",
             "it", "?", "a", "cat", "."]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = BUILTIN_TEMPLATES["chatml"].replace("\\n", " ")
    fast.save_pretrained(str(path))
    return path


def test_a_hugging_face_tokenizer_uses_its_own_chat_template(tmp_path):
    tok = HFTokenizer(make_chat_tokenizer(tmp_path / "tok"))
    chat = ChatTemplate(None, tok)
    assert chat.own and "chat template of tokenizer" in chat.name
    enc = chat.encode(parse_conversation(conversation("what is it ?", "a cat .")))
    words = tok.tok.convert_ids_to_tokens(enc.ids)
    assert [w for w, t in zip(words, enc.targets, strict=True) if t] == \
        ["a", "cat", ".", "<|im_end|>"]
    assert words[:3] == ["<|im_start|>", "user", "what"]


# ------------------------------------------------------------------ the loss sees only answers

def test_the_loss_is_the_cross_entropy_of_the_answer_tokens_only():
    g = graph_of(CHAT_LM)
    rows = [{"conversations": parse_conversation(conversation(f"Question {i}?", f"Answer {i}."))}
            for i in range(4)]
    ds = SpecDataset(ListSource(rows), g, ByteTokenizer(), dims={"T": 96},
                     chat_template="chatml")
    assert ds.mapping["answer"] == "<targets of text>"
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("text", "answer")}
    padding = batch["text"] == ByteTokenizer.pad_id
    assert padding.any() and not (batch["answer"] & padding).any()  # padding never a target
    assert target_text(batch["text"][2], batch["answer"][2]) == "Answer 2.<|im_end|>\n"
    torch.manual_seed(0)
    model = _model(CHAT_LM)
    logits, losses = model(**batch, return_losses=True)
    want = batch["answer"][:, 1:]
    manual = F.cross_entropy(logits["logits"][:, :-1][want].float(), batch["text"][:, 1:][want])
    torch.testing.assert_close(losses["lm_loss"], manual, rtol=1e-6, atol=1e-6)
    # a batch without a single answer token gives 0 and finite gradients, not 0/0
    _, none = model(text=batch["text"], answer=torch.zeros_like(batch["answer"]),
                    return_losses=True)
    none["total"].backward()
    assert float(none["lm_loss"].detach()) == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _model(spec_text: str):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.mmg"
        path.write_text(spec_text)
        cls, g = load_class(path)
        return cls()


def test_conversations_into_a_next_token_loss_without_a_mask_are_refused():
    g = graph_of(BARE_LM)
    rows = [{"conversations": parse_conversation(conversation("Q?", "A."))}]
    with pytest.raises(DataError, match=r"examples\[0\]: .* next_token loss 'lm_loss' has no "
                                        r"mask, so it would learn the human turns.*"
                                        r"input answer: Mask\[B, 64\]"):
        SpecDataset(ListSource(rows), g, ByteTokenizer(), dims={"T": 64})


def test_plain_text_without_a_mask_is_told_that_padding_counts():
    ds = SpecDataset(ListSource([{"text": "hello"}]), graph_of(BARE_LM), ByteTokenizer(),
                     dims={"T": 16})
    assert "padding of 'text' counts as targets" in ds.padding_notes()[0]
    masked = SpecDataset(ListSource([{"text": "hello"}]), graph_of(CHAT_LM), ByteTokenizer(),
                         dims={"T": 16})
    assert masked.padding_notes() == []
    assert masked[0]["answer"].tolist() == [True] * 7 + [False] * 9  # BOS hello EOS, no padding


# ------------------------------------------------------------------ truncation

def test_cuts_are_counted_and_answerless_conversations_left_out():
    rows = [{"conversations": parse_conversation(conversation("Q?", "A" * n))}
            for n in (1, 30, 200)]
    ds = SpecDataset(ListSource(rows), graph_of(CHAT_LM), ByteTokenizer(), dims={"T": 65},
                     chat_template="chatml")
    cut = ds.cuts["text"]  # BOS and ChatML around the answer: 64 tokens
    assert cut.cut == [("examples[1]", 94), ("examples[2]", 264)]
    assert cut.answerless == [] and len(ds) == 3
    assert "2 of 3 texts are longer than its 65 tokens and were cut" in ds.cut_report()[0]
    # an answer that starts after the cut leaves nothing to learn: left out, and said
    rows.append({"conversations": parse_conversation(conversation("Q" * 80, "late"))})
    ds = SpecDataset(ListSource(rows), graph_of(CHAT_LM), ByteTokenizer(), dims={"T": 65},
                     chat_template="chatml")
    assert ds.cuts["text"].answerless == ["examples[3]"] and len(ds) == 3
    assert "lost every answer and are left out (examples[3])" in ds.cut_report()[0]
    with pytest.raises(DataError, match=r"spec input 'text'.*texts are longer than its 65 "
                                        r"tokens and were cut: examples\[1\] \(94 tokens\).*"
                                        r"truncation = \"report\""):
        SpecDataset(ListSource(rows), graph_of(CHAT_LM), ByteTokenizer(), dims={"T": 65},
                    chat_template="chatml", truncation="refuse")


# ------------------------------------------------------------------ vocabulary

MASKED_TEXT = """
model masked_text {
  input image: Image[B, 3, 8, 8]
  input text: Tokens[B, 16]
  layer masker: mask_tokens(prob=0.15, mask_id=3)
  encoder vision: vit(patch=4, width=16, depth=1, heads=2, pool="cls")
  encoder texter: text_transformer(vocab=100, width=16, depth=1, heads=2, max_len=16,
                                   pool="eot")
  corrupted, where = masker(text)
  img = l2norm(vision(image))
  txt = l2norm(texter(corrupted))
  output img, txt
  loss itc = contrastive(img, txt)
}
"""


def test_a_tokenizer_larger_than_a_vocab_reached_through_ops_is_refused():
    src = ListSource([{"image": np.zeros((8, 8)), "text": "hi"}])
    with pytest.raises(VocabError, match=r"tokenizer byte has 259 ids, but 'texter' "
                                         r"\(text_transformer, vocab=100\) .* takes only 100"):
        SpecDataset(src, graph_of(MASKED_TEXT), ByteTokenizer())


def test_vocab_mismatch_is_exit_1_before_training(tmp_path, capsys):
    spec = tmp_path / "m.mmg"
    spec.write_text(MASKED_TEXT)
    assert main(["train", str(spec), "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "259 ids" in err and "takes only 100" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ validation, eval, pictures

def write_chat_data(path, n: int, start: int = 0):
    rows = [{"conversations": conversation(f"Say {i}", f"{i} it is")}
            for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def chat_spec(tmp_path):
    spec = tmp_path / "chat.mmg"
    spec.write_text(CHAT_LM)
    return spec


def weights(run):
    from safetensors.torch import load_file
    return load_file(str(run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
                         .strip() / "model.safetensors"))


def test_validation_losses_go_to_metrics_and_do_not_change_training(tmp_path, chat_spec):
    data = write_chat_data(tmp_path / "d.jsonl", 16)
    held = write_chat_data(tmp_path / "held.jsonl", 6, start=100)
    common = dict(data=str(data), dims={"T": 64}, quiet=True,
                  settings_overrides={"eval_every": 2})
    with_val = train(chat_spec, out=tmp_path / "a", val=str(held), **common)
    train(chat_spec, out=tmp_path / "b", **common)
    assert with_val["validation_examples"] == 6
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "val/total" in x] == [2, 4]
    assert all("loss/lm_loss" in x and "lr" in x for x in lines)
    assert all(np.isfinite(x["val/lm_loss"]) for x in lines if "val/lm_loss" in x)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: validation draws nothing
    panels, _ = read_series(tmp_path / "a" / "metrics.jsonl")
    assert set(panels) == {"lm_loss", "total", "learning rate"}
    assert set(panels["lm_loss"]) == {"train", "validation"}
    assert loss_png(tmp_path / "a").stat().st_size > 0


def test_a_fraction_held_out(tmp_path, chat_spec):
    data = write_chat_data(tmp_path / "d.jsonl", 20)
    result = train(chat_spec, out=tmp_path / "r", data=str(data), dims={"T": 64}, quiet=True,
                   val="0.2")
    assert (result["examples"], result["validation_examples"]) == (16, 4)
    last = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val/total" in last  # the stage's end is always validated


@pytest.mark.parametrize("val,code,words", [
    ("1.5", 2, "between 0 and 1"), ("0", 2, "between 0 and 1"),
    ("0.001", 1, "holds out 0 of 20 examples"), ("missing.jsonl", 1, "not found"),
    ("d.jsonl", 2, "that is the training data itself")])
def test_bad_val(tmp_path, chat_spec, capsys, monkeypatch, val, code, words):
    monkeypatch.chdir(tmp_path)
    write_chat_data(tmp_path / "d.jsonl", 20)
    argv = ["train", str(chat_spec), "--data", "d.jsonl", "--dims", "T=64", "--val", val,
            "--out", "r", "--quiet"]
    assert main(argv) == code
    assert words in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_eval_never_reads_the_training_data_unless_asked(tmp_path, chat_spec, capsys):
    data = write_chat_data(tmp_path / "d.jsonl", 8)
    train(chat_spec, out=tmp_path / "r", data=str(data), dims={"T": 64}, quiet=True)
    base = ["eval", str(chat_spec), "--checkpoint", str(tmp_path / "r"), "--dims", "T=64"]
    assert main(base + ["--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "has no test split (" in err and "d.test.jsonl not found" in err
    assert "--split train" in err
    assert main(base + ["--data", str(data), "--split", "train", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "train" and "the training data" in out["evaluated_on"]
    write_chat_data(tmp_path / "d.test.jsonl", 3, start=50)
    assert main(base + ["--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "d.test.jsonl, split test (3 examples)" in out
    other = write_chat_data(tmp_path / "other.jsonl", 2, start=70)
    assert main(base + ["--data", str(other), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] is None and "the whole file (no test split" in out["evaluated_on"]


def test_tensorboard_writes_events_or_says_in_one_line_it_cannot(tmp_path, chat_spec, capsys,
                                                                 monkeypatch):
    data = write_chat_data(tmp_path / "d.jsonl", 8)
    args = dict(data=str(data), dims={"T": 64}, quiet=True, max_steps=2)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    train(chat_spec, out=tmp_path / "none", tensorboard=True, **args)
    err = capsys.readouterr().err
    assert err.count("--tensorboard: the tensorboard package is not installed") == 1
    assert "mmgraph[tensorboard]" in err and not (tmp_path / "none" / "tensorboard").exists()
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard")
    pytest.importorskip("tensorboard")
    train(chat_spec, out=tmp_path / "tb", tensorboard=True, **args)
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    train(chat_spec, out=tmp_path / "off", **args)  # not asked: not written
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_jsonl_conversations_reach_the_model(tmp_path, chat_spec):
    data = write_chat_data(tmp_path / "d.jsonl", 8)
    src = open_source(str(data), "train")
    assert str(src[0]["text"]) == "user: Say 0\nassistant: 0 it is"
    result = train(chat_spec, out=tmp_path / "r", data=str(data), dims={"T": 96}, quiet=True)
    assert np.isfinite(result["final_losses"]["lm_loss"]) and result["cut"] == {"text": 0}
