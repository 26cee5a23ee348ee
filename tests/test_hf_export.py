"""The way out: a trained layer written back as a Hugging Face folder (`mmgraph export --target
hf`) that transformers' from_pretrained loads with the same outputs (tiny random checkpoints,
saved offline into temporary folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmgraph.backends.torch.hf_export import write_hf
from mmgraph.build import load
from mmgraph.cli import main

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

TOL = 1e-6


def _diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.mmg"
    path.write_text(text, encoding="utf-8")
    return path


def _llama_folder(tmp_path: Path, tied: bool = False) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, vocab_size=64,
                                      max_position_embeddings=64, rms_norm_eps=1e-5,
                                      tie_word_embeddings=tied)
    hf = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path / "llama"
    hf.save_pretrained(folder, safe_serialization=True)
    return folder


def _llama_spec(tmp_path: Path, folder: Path) -> Path:
    return _spec(tmp_path, f"""
model lm_only {{
  input text: Tokens[B, 10]
  decoder lm: causal_lm() pretrained("{folder}")
  output lm(tokens=text) as logits
}}
""")


def _perturb(module: torch.nn.Module) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("tied", [False, True])
def test_a_fine_tuned_llama_round_trips_through_from_pretrained(tmp_path, tied):
    folder = _llama_folder(tmp_path, tied)
    spec = _llama_spec(tmp_path, folder)
    model = load(spec).eval()
    _perturb(model.lm)  # stands for training: every weight differs from the source's
    out = tmp_path / "hf"
    done = write_hf(model, model.graph, None, out)
    assert done["layer"] == "lm" and done["family"] == "llama" and done["kept"] == 0
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert back.config.num_key_value_heads == 2 and back.config.tie_word_embeddings == tied
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        ours = model(text=tokens)["logits"]
        theirs = back(input_ids=tokens).logits
    assert _diff(ours, theirs) <= TOL
    source = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert _diff(source(input_ids=tokens).logits, theirs) > 1e-3  # the fine-tuned ones


def test_a_llama_trained_from_scratch_gets_a_config_built_from_its_table(tmp_path):
    spec = _spec(tmp_path, """
model lm_only {
  input text: Tokens[B, 10]
  decoder lm: causal_lm(vocab=64, width=32, depth=2, heads=4, kv_heads=2, ffn=48, tied=false,
                        max_len=64, norm_eps=1e-5, rope_theta=500000.0)
  output lm(tokens=text) as logits
}
""")
    torch.manual_seed(0)
    model = load(spec).eval()
    out = tmp_path / "hf"
    done = write_hf(model, model.graph, "lm", out)
    config = json.loads((out / "config.json").read_text())
    assert done["model_type"] == config["model_type"] == "llama"
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert _diff(model(text=tokens)["logits"], back(input_ids=tokens).logits) <= TOL


def test_export_target_hf_through_the_cli(tmp_path, capsys):
    folder = _llama_folder(tmp_path)
    spec = _llama_spec(tmp_path, folder)
    out = tmp_path / "hf"
    assert main(["export", str(spec), "--target", "hf", "-o", str(out)]) == 0
    assert "as a Hugging Face folder" in capsys.readouterr().out
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    source = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert _diff(source(input_ids=tokens).logits, back(input_ids=tokens).logits) <= TOL


CLIP_SPEC = """
model v {
  input image: Image[B, 3, 16, 16]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="quick_gelu",
                      pre_norm=true, patch_bias=false, pool="cls")
                      pretrained("FOLDER", part="vision_model")
  connector proj: linear(out=24, bias=false)
  output proj(vision(image)) as out
}
"""


@pytest.fixture
def clip_folder(tmp_path):
    T = transformers
    config = T.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, vocab_size=64, max_position_embeddings=12),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, image_size=16, patch_size=4),
        projection_dim=24)
    torch.manual_seed(0)
    hf = T.CLIPModel(config).eval()
    folder = tmp_path / "clip"
    hf.save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_fine_tuned_clip_vision_part_goes_back_into_its_clip_model(tmp_path, clip_folder):
    spec = _spec(tmp_path, CLIP_SPEC.replace("FOLDER", str(clip_folder)))
    model = load(spec).eval()
    _perturb(model.vision)
    out = tmp_path / "hf"
    done = write_hf(model, model.graph, "vision", out)
    assert done["kept"] > 0  # the text tower and projections, as they were
    back = transformers.CLIPModel.from_pretrained(out).eval()
    source = transformers.CLIPModel.from_pretrained(clip_folder).eval()
    image = torch.randn(2, 3, 16, 16)
    text = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        ours = model.vision(image)
        theirs = back.vision_model(pixel_values=image).pooler_output
        assert _diff(ours, theirs) <= TOL
        assert _diff(back.text_model(input_ids=text).pooler_output,
                     source.text_model(input_ids=text).pooler_output) == 0


def test_a_layer_without_a_hugging_face_form_is_refused(tmp_path, clip_folder, capsys):
    spec = _spec(tmp_path, CLIP_SPEC.replace("FOLDER", str(clip_folder)))
    out = tmp_path / "hf"
    assert main(["export", str(spec), "--target", "hf", "-o", str(out), "--part", "proj"]) == 1
    err = capsys.readouterr().err
    assert "proj is a linear trained from scratch" in err
    assert main(["export", str(spec), "--target", "hf", "-o", str(out), "--part", "nope"]) == 1
    assert "has no layer 'nope'" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()


TRAIN_SPEC = """
model tiny {
  input image: Image[B, 3, 16, 16]
  input text:  Tokens[B, 40]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="quick_gelu",
                      pre_norm=true, patch_bias=false, pool="cls")
                      pretrained("FOLDER", part="vision_model")
  encoder texter: text_transformer(vocab=259, width=32, depth=1, heads=4, max_len=40,
                                   causal=true, pool="eot")
  img = l2norm(vision(image))
  txt = l2norm(texter(text))
  output img, txt
  loss itc = contrastive(img, txt)
  train {
    batch_size = 16
  }
}
"""


def test_a_trained_run_exports_its_pretrained_part(tmp_path, clip_folder, capsys):
    from mmgraph.train.run import load_trained, train

    spec = _spec(tmp_path, TRAIN_SPEC.replace("FOLDER", str(clip_folder)))
    train(spec, out=tmp_path / "run", max_steps=1, quiet=True)
    out = tmp_path / "hf"
    assert main(["export", str(spec), "--target", "hf", "--checkpoint", str(tmp_path / "run"),
                 "-o", str(out), "--part", "vision"]) == 0
    model, _, _ = load_trained(spec, tmp_path / "run")
    back = transformers.CLIPModel.from_pretrained(out).eval()
    source = transformers.CLIPModel.from_pretrained(clip_folder).eval()
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = back.vision_model(pixel_values=image).pooler_output
        assert _diff(model.vision(image), theirs) <= TOL
        assert _diff(source.vision_model(pixel_values=image).pooler_output, theirs) > 0
    assert main(["export", str(spec), "--target", "hf", "--checkpoint", str(tmp_path / "run"),
                 "-o", str(clip_folder), "--part", "vision"]) == 1
    assert "the folder vision was loaded from" in capsys.readouterr().err


@pytest.mark.parametrize("cls,layer,decl,feed", [
    ("CLIPVisionModel", "vision",
     'vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="quick_gelu", pre_norm=true, '
     'patch_bias=false, pool="cls")', "image"),
    ("CLIPTextModel", "texter",
     'text_transformer(vocab=64, width=32, depth=2, heads=4, mlp=48, act="quick_gelu", '
     'max_len=12, causal=true, pool="eot")', "text"),
])
def test_clip_towers_trained_from_scratch_load_as_clip_models(tmp_path, cls, layer, decl, feed):
    kind = "Image[B, 3, 16, 16]" if feed == "image" else "Tokens[B, 12]"
    spec = _spec(tmp_path, f"""
model t {{
  input {feed}: {kind}
  encoder {layer}: {decl}
  output {layer}({feed}) as out
}}
""")
    torch.manual_seed(0)
    model = load(spec).eval()
    out = tmp_path / "hf"
    write_hf(model, model.graph, layer, out)
    back = getattr(transformers, cls).from_pretrained(out).eval()
    if feed == "image":
        x = torch.randn(2, 3, 16, 16)
        kwargs = {"pixel_values": x}
    else:
        x = torch.randint(3, 63, (2, 12))
        x[:, -1], x[0, 5] = 63, 63  # the end of text: the largest id
        kwargs = {"input_ids": x}
    with torch.no_grad():
        assert _diff(model(**{feed: x})["out"], back(**kwargs).pooler_output) <= TOL


def test_lora_adapters_are_merged_into_the_written_weights(tmp_path):
    folder = _llama_folder(tmp_path)
    spec = _spec(tmp_path, f"""
model lm_only {{
  input text: Tokens[B, 10]
  decoder lm: causal_lm() pretrained("{folder}") frozen lora(r=4, alpha=8)
  output lm(tokens=text) as logits
}}
""")
    model = load(spec).eval()
    torch.manual_seed(4)
    with torch.no_grad():  # B starts at zero: give the adapters something to say
        for name, p in model.lm.named_parameters():
            if name.endswith("lora_b"):
                p.copy_(0.1 * torch.randn_like(p))
    out = tmp_path / "hf"
    done = write_hf(model, model.graph, "lm", out)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    source = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        ours = model(text=tokens)["logits"]
        assert _diff(ours, back(input_ids=tokens).logits) <= 1e-5  # merged: another sum order
        assert _diff(ours, source(input_ids=tokens).logits) > 1e-3
    assert done["written"] > 0
