"""Pretrained weights from tiny random Hugging Face checkpoints (saved offline into temporary
folders as safetensors) give the transformers module's outputs to 1e-5 through a spec; a
checkpoint that does not fit is refused naming each tensor."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from mmgraph.backends.torch.load import model_class
from mmgraph.backends.torch.pretrained import PretrainedError, load_pretrained
from mmgraph.compiler import build_graph
from mmgraph.ir.graph import Pretrained

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

TOL = 1e-5


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.mmg"
    path.write_text(text, encoding="utf-8")
    return path


def _model(spec: Path, pretrained: dict[str, tuple[Path, str | None, str]]):
    """The spec's model with each named declaration's weights from (folder, part, family)."""
    g = build_graph(spec, {}, None, ())
    for name, (folder, part, family) in pretrained.items():
        inst = g.instances[name]
        inst.pretrained = Pretrained(str(folder), part, family, inst.span)
    torch.manual_seed(1)
    model = model_class(g, spec)()
    model.graph = g
    load_pretrained(model, g)
    return model.eval(), g


def _save(model, folder: Path) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------- CLIP

def _clip_config(**text):
    T = transformers
    return T.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, vocab_size=64, max_position_embeddings=12,
                         eos_token_id=2, bos_token_id=0, pad_token_id=1, **text),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, image_size=16, patch_size=4),
        projection_dim=24)


CLIP_SPEC = """
model tiny_clip {
  input image: Image[B, 3, 16, 16]
  input text: Tokens[B, 12]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="quick_gelu",
                      pre_norm=true, patch_bias=false, pool="cls")
  encoder texter: text_transformer(vocab=64, width=32, depth=2, heads=4, mlp=48,
                                   act="quick_gelu", max_len=12, causal=true, pool="eot")
  connector img_proj: linear(out=24, bias=false)
  connector txt_proj: linear(out=24, bias=false)
  img = img_proj(vision(image))
  txt = txt_proj(texter(text))
  output img, txt
}
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.CLIPModel(_clip_config()).eval()
    folder = _save(hf, tmp_path_factory.mktemp("clip"))
    return hf, folder


def test_clip_towers_and_projections_match_transformers(clip, tmp_path):
    hf, folder = clip
    model, _ = _model(_spec(tmp_path, CLIP_SPEC), {
        "vision": (folder, "vision_model", "clip_vision"),
        "texter": (folder, "text_model", "clip_text"),
        "img_proj": (folder, "visual_projection", "clip_projection"),
        "txt_proj": (folder, "text_projection", "clip_projection")})
    torch.manual_seed(2)
    image = torch.randn(3, 3, 16, 16)
    text = torch.randint(3, 64, (3, 12))
    text[:, -1] = 2  # end of text, the largest... and CLIP's eos id here
    text[0, 5], text[0, 6:] = 2, 1  # a shorter caption
    with torch.no_grad():
        ours = model(image=image, text=text)
        img = hf.get_image_features(pixel_values=image)
        txt = hf.get_text_features(input_ids=text)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    assert _diff(ours["img"], img) <= TOL
    assert _diff(ours["txt"], txt) <= TOL


def test_clip_vision_model_folder_without_a_part(tmp_path):
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(_clip_config().vision_config).eval()
    folder = _save(hf, tmp_path / "clip_vision")
    spec = _spec(tmp_path, """
model v {
  input image: Image[B, 3, 16, 16]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="quick_gelu",
                      pre_norm=true, patch_bias=false, pool="cls")
  output vision(image) as out
}
""")
    model, g = _model(spec, {"vision": (folder, None, "clip_vision")})
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = model(image=image)
        theirs = hf(pixel_values=image).pooler_output
    assert _diff(ours["out"], theirs) <= TOL


# ---------------------------------------------------------------- Llama (GQA)

def _llama(tied: bool, eps: float = 1e-6):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, vocab_size=64,
                                      max_position_embeddings=64, tie_word_embeddings=tied,
                                      rms_norm_eps=eps)
    return transformers.LlamaForCausalLM(config).eval()


LLAMA_SPEC = """
model lm_only {
  input text: Tokens[B, 10]
  decoder lm: causal_lm(vocab=64, width=32, depth=2, heads=4, kv_heads=2, ffn=48, tied=TIED,
                        max_len=64EPS)
  output lm(tokens=text) as logits
}
"""


@pytest.mark.parametrize("hf_tied,spec_tied,eps", [
    (False, False, None), (True, True, None), (True, False, None),
    (False, False, 1e-5),  # Llama-2 and Vicuna's rms_norm_eps
])
def test_llama_gqa_logits_match_transformers(tmp_path, hf_tied, spec_tied, eps):
    hf = _llama(hf_tied, eps or 1e-6)
    folder = _save(hf, tmp_path / "llama")
    spec = _spec(tmp_path, LLAMA_SPEC.replace("TIED", "true" if spec_tied else "false")
                 .replace("EPS", f", norm_eps={eps}" if eps else ""))
    model, _ = _model(spec, {"lm": (folder, None, "llama")})
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        ours = model(text=tokens)["logits"]
        theirs = hf(input_ids=tokens).logits
    assert _diff(ours, theirs) <= TOL


# ---------------------------------------------------------------- ViT, BERT

def test_vit_last_hidden_state_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=48, image_size=16, patch_size=4)
    assert config.layer_norm_eps == 1e-12  # ViT's, where mmgraph's vit defaults to 1e-5
    hf = transformers.ViTModel(config).eval()
    folder = _save(hf, tmp_path / "vit")
    spec = _spec(tmp_path, """
model v {
  input image: Image[B, 3, 16, 16]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, norm_eps=1e-12)
  output vision(image) as out
}
""")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = _model(spec, {"vision": (folder, None, "vit")})
    assert any("pooler.dense.weight" in str(w.message) for w in caught)  # named, not used
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = model(image=image)["out"]
        theirs = hf(pixel_values=image).last_hidden_state
    assert _diff(ours, theirs) <= TOL


def test_bert_last_hidden_state_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, vocab_size=64,
                                     max_position_embeddings=16)
    hf = transformers.BertModel(config).eval()
    folder = _save(hf, tmp_path / "bert")
    spec = _spec(tmp_path, """
model b {
  input text: Tokens[B, 10]
  encoder enc: text_transformer(vocab=64, width=32, depth=2, heads=4, mlp=48, max_len=16,
                                type_vocab=2, post_norm_blocks=true)
  output enc(text) as out
}
""")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = _model(spec, {"enc": (folder, None, "bert")})
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        ours = model(text=tokens)["out"]
        theirs = hf(input_ids=tokens).last_hidden_state
    assert _diff(ours, theirs) <= TOL


# ---------------------------------------------------------------- refusals

VISION_SPEC = """
model v {
  input image: Image[B, 3, 16, 16]
  encoder vision: vit(patch=4, width=32, depth=DEPTH, heads=4, mlp=MLP, act="quick_gelu",
                      pre_norm=true, patch_bias=false, pool="cls")
  output vision(image) as out
}
"""


def _vision_spec(tmp_path, depth=2, mlp=48):
    return _spec(tmp_path, VISION_SPEC.replace("DEPTH", str(depth)).replace("MLP", str(mlp)))


def _rewrite(folder: Path, out: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    out.mkdir()
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_a_missing_tensor_is_named(clip, tmp_path):
    _, folder = clip
    name = "vision_model.encoder.layers.1.self_attn.k_proj.bias"
    broken = _rewrite(folder, tmp_path / "broken", lambda t: t.pop(name))
    with pytest.raises(PretrainedError) as err:
        _model(_vision_spec(tmp_path), {"vision": (broken, "vision_model", "clip_vision")})
    assert name in str(err.value) and "missing" in str(err.value)
    assert "vision.blocks.layers.1.attn.k.bias" in str(err.value)


def test_a_mis_shaped_tensor_is_named_with_both_shapes(clip, tmp_path):
    _, folder = clip
    with pytest.raises(PretrainedError) as err:
        _model(_vision_spec(tmp_path, mlp=40), {"vision": (folder, "vision_model",
                                                           "clip_vision")})
    text = str(err.value)
    assert "vision_model.encoder.layers.0.mlp.fc1.weight is [48, 32]" in text
    assert "vision.blocks.layers.0.ffn.fc1.weight is [40, 32]" in text


def test_extra_layers_in_the_checkpoint_are_unexpected(clip, tmp_path):
    _, folder = clip
    with pytest.raises(PretrainedError) as err:
        _model(_vision_spec(tmp_path, depth=1), {"vision": (folder, "vision_model",
                                                            "clip_vision")})
    assert "unexpected" in str(err.value)
    assert "vision_model.encoder.layers.1.mlp.fc2.bias" in str(err.value)


def test_a_pickle_only_folder_is_refused_clearly(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(PretrainedError, match="pytorch_model.bin.*safetensors only"):
        _model(_vision_spec(tmp_path), {"vision": (folder, None, "clip_vision")})


def test_a_sharded_checkpoint_loads(clip, tmp_path):
    hf, _ = clip
    folder = tmp_path / "sharded"
    hf.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    model, _ = _model(_vision_spec(tmp_path), {"vision": (folder, "vision_model",
                                                          "clip_vision")})
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = hf.vision_model(pixel_values=image).pooler_output
        assert _diff(model(image=image)["out"], theirs) <= TOL


def test_weights_are_cast_to_the_model_dtype(clip, tmp_path):
    _, folder = clip
    half = _rewrite(folder, tmp_path / "half",
                    lambda t: t.update({k: v.half() for k, v in t.items()}))
    model, _ = _model(_vision_spec(tmp_path), {"vision": (half, "vision_model", "clip_vision")})
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_lora_on_a_pretrained_tower_keeps_its_adapters_and_the_outputs(clip, tmp_path):
    hf, folder = clip
    spec = _spec(tmp_path, VISION_SPEC.replace("DEPTH", "2").replace("MLP", "48").replace(
        'pool="cls")', 'pool="cls") frozen lora(r=2)'))
    model, _ = _model(spec, {"vision": (folder, "vision_model", "clip_vision")})
    assert any("lora_a" in k for k in model.state_dict())
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # lora_b starts at zero: the tower is the checkpoint's
        theirs = hf.vision_model(pixel_values=image).pooler_output
        assert _diff(model(image=image)["out"], theirs) <= TOL


def test_mmgraph_load_train_and_export_take_the_pretrained_weights(clip, tmp_path, monkeypatch):
    """One helper (mmgraph.build.instantiate) makes every model: with the weights of pretrained
    declarations unless a checkpoint is to give them all."""
    import mmgraph.build as build

    hf, folder = clip
    spec = _vision_spec(tmp_path)
    real = build.build_graph

    def with_pretrained(*args, **kwargs):
        g = real(*args, **kwargs)
        inst = g.instances["vision"]
        inst.pretrained = Pretrained(str(folder), "vision_model", "clip_vision", inst.span)
        return g

    monkeypatch.setattr(build, "build_graph", with_pretrained)
    loaded = build.load(spec).eval()
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = hf.vision_model(pixel_values=image).pooler_output
        assert _diff(loaded(image=image)["out"], theirs) <= TOL
    fresh = build.load(spec, pretrained=False).eval()
    with torch.no_grad():
        assert _diff(fresh(image=image)["out"], theirs) > 1e-3


TRAIN_SPEC = """
model tiny {
  input image: Image[B, 3, 16, 16]
  input text:  Tokens[B, 40]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="quick_gelu",
                      pre_norm=true, patch_bias=false, pool="cls")
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


def _pretend_pretrained(monkeypatch, folder):
    import mmgraph.build as build

    real = build.build_graph

    def with_pretrained(*args, **kwargs):
        g = real(*args, **kwargs)
        inst = g.instances["vision"]
        inst.pretrained = Pretrained(str(folder), "vision_model", "clip_vision", inst.span)
        return g

    monkeypatch.setattr(build, "build_graph", with_pretrained)


def test_train_starts_from_the_pretrained_weights(clip, tmp_path, monkeypatch):
    import mmgraph.train.run as run

    hf, folder = clip
    _pretend_pretrained(monkeypatch, folder)
    seen = {}

    class Stop(Exception):
        pass

    def trainer(model, *args, **kwargs):
        seen["model"] = model
        raise Stop

    monkeypatch.setattr(run, "Trainer", trainer)
    with pytest.raises(Stop):
        run.train(_spec(tmp_path, TRAIN_SPEC), out=tmp_path / "run", quiet=True)
    ours = seen["model"].vision.state_dict()
    theirs = hf.vision_model.state_dict()
    assert torch.equal(ours["blocks.layers.1.attn.q.weight"],
                       theirs["encoder.layers.1.self_attn.q_proj.weight"])


def test_export_without_a_checkpoint_takes_the_pretrained_weights(clip, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    hf, folder = clip
    _pretend_pretrained(monkeypatch, folder)
    manifest = export(_vision_spec(tmp_path), tmp_path / "dist", targets.load("onnx"),
                      log=lambda *a: None)
    (part,) = manifest["parts"]
    session = ort.InferenceSession(str(tmp_path / "dist" / part["onnx"]))
    image = torch.randn(2, 3, 16, 16)
    (out,) = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        theirs = hf.vision_model(pixel_values=image).pooler_output
    assert _diff(torch.from_numpy(out), theirs) <= 1e-4  # onnxruntime's own kernels


# ---------------------------------------------------------------- through the spec itself

def test_a_spec_with_pretrained_parts_loads_them_through_mmgraph_load(clip, tmp_path):
    """`pretrained(PATH, part=...)` in the spec: check sets each part's folder and family,
    mmgraph.load reads the weights; the sizes come from config.json."""
    import shutil

    from mmgraph.build import load

    hf, folder = clip
    shutil.copytree(folder, tmp_path / "clip")
    spec = _spec(tmp_path, """
model tiny_clip {
  input image: Image[B, 3, 16, 16]
  input text: Tokens[B, 12]
  encoder vision: vit(pool="cls") pretrained("clip", part="vision_model")
  encoder texter: text_transformer(pool="eot") pretrained("clip", part="text_model")
  connector img_proj: linear(bias=false) pretrained("clip", part="visual_projection")
  connector txt_proj: linear(bias=false) pretrained("clip", part="text_projection")
  img = img_proj(vision(image))
  txt = txt_proj(texter(text))
  output img, txt
}
""")
    model = load(spec).eval()
    image = torch.randn(2, 3, 16, 16)
    text = torch.randint(3, 64, (2, 12))
    text[:, -1] = 2
    with torch.no_grad():
        ours = model(image=image, text=text)
        img = hf.get_image_features(pixel_values=image)
        txt = hf.get_text_features(input_ids=text)
    assert _diff(ours["img"], getattr(img, "pooler_output", img)) <= TOL
    assert _diff(ours["txt"], getattr(txt, "pooler_output", txt)) <= TOL


def test_opt_logits_match_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=48,
                                    num_attention_heads=4, vocab_size=64,
                                    max_position_embeddings=32, word_embed_proj_dim=32)
    hf = transformers.OPTForCausalLM(config).eval()
    folder = _save(hf, tmp_path / "opt")
    spec = _spec(tmp_path, """
model opt {
  input text: Tokens[B, 10]
  decoder lm: causal_lm(vocab=64, width=32, depth=2, heads=4, ffn=48, norm="layer",
                        pos="learned", act="relu", bias=true, tied=true, max_len=32,
                        pos_offset=2)
  output lm(tokens=text) as logits
}
""")
    model, _ = _model(spec, {"lm": (folder, None, "opt")})
    tokens = torch.randint(3, 64, (2, 10))
    with torch.no_grad():
        ours = model(text=tokens)["logits"]
        theirs = hf(input_ids=tokens).logits
    assert _diff(ours, theirs) <= TOL


# ---------------------------------------------------------------- a composed LLaVA

LLAVA_SPEC = """
model tiny_llava {
  input image: Image[B, 3, 16, 16]
  input text: Tokens[B, 8]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="quick_gelu",
                      pre_norm=true, patch_bias=false, select_layer=-2, drop_cls=true)
  connector proj: mlp(out=32, layers=2, act="gelu")
  decoder lm: causal_lm(vocab=80, width=32, depth=2, heads=4, kv_heads=2, ffn=48, max_len=64)
  output lm(prefix=proj(vision(image)), tokens=text) as logits
}
"""


def test_llava_composed_from_its_parts_matches_transformers(tmp_path):
    """Vision tower (penultimate layer, class token dropped), projector and GQA language model
    of one LlavaForConditionalGeneration folder, each part through its own table."""
    T = transformers
    torch.manual_seed(0)
    vision = T.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=48, image_size=16, patch_size=4)
    text = T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, vocab_size=80,
                         max_position_embeddings=64)
    hf = T.LlavaForConditionalGeneration(T.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=79)).eval()
    folder = _save(hf, tmp_path / "llava")
    model, _ = _model(_spec(tmp_path, LLAVA_SPEC), {
        "vision": (folder, "vision_tower", "clip_vision"),
        "proj": (folder, "multi_modal_projector", "llava_projector"),
        "lm": (folder, "language_model", "llama")})
    image = torch.randn(2, 3, 16, 16)
    prompt = torch.randint(0, 79, (2, 8))
    ids = torch.cat([torch.full((2, 16), 79), prompt], dim=1)  # one token per patch first
    with torch.no_grad():
        ours = model(image=image, text=prompt)["logits"]
        theirs = hf(input_ids=ids, pixel_values=image).logits
    assert ours.shape == theirs.shape
    assert _diff(ours, theirs) <= TOL


def test_whisper_encoder_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8,
        max_source_positions=16, vocab_size=64, max_target_positions=16, pad_token_id=1,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    hf = transformers.WhisperModel(config).eval()
    folder = _save(hf, tmp_path / "whisper")
    spec = _spec(tmp_path, """
model w {
  input mel: Mel[B, 8, 32]
  encoder enc: audio_encoder(width=32, depth=2, heads=4, mlp=48, mels=8, max_frames=32)
  output enc(mel) as out
}
""")
    model, _ = _model(spec, {"enc": (folder, "encoder", "whisper_encoder")})
    assert not model.enc.blocks.layers[1].attn.k.bias.any()
    mel = torch.randn(2, 8, 32)
    with torch.no_grad():
        ours = model(mel=mel)["out"]
        theirs = hf.encoder(input_features=mel).last_hidden_state
    assert _diff(ours, theirs) <= TOL


def test_qwen2_biases_on_q_k_v_only_match_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48,
                                      vocab_size=64, max_position_embeddings=64)
    hf = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # transformers initialises biases at zero: make them count
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    folder = _save(hf, tmp_path / "qwen2")
    spec = _spec(tmp_path, LLAMA_SPEC.replace("TIED", "false").replace("EPS", ", bias=true"))
    model, _ = _model(spec, {"lm": (folder, None, "llama")})
    assert model.lm.layers[0].attn.q.bias.abs().sum() > 0
    assert not model.lm.layers[0].attn.o.bias.any()
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        ours = model(text=tokens)["logits"]
        theirs = hf(input_ids=tokens).logits
    assert _diff(ours, theirs) <= TOL


def test_an_untied_head_outside_the_part_is_not_replaced_by_the_embeddings(tmp_path):
    hf = _llama(False)
    folder = _save(hf, tmp_path / "llama")
    moved = _rewrite(folder, tmp_path / "moved", lambda t: t.update(
        {("lm." + k if k.startswith("model.") else k): t.pop(k) for k in list(t)}))
    spec = _spec(tmp_path, LLAMA_SPEC.replace("TIED", "false").replace("EPS", ""))
    with pytest.raises(PretrainedError) as err:
        _model(spec, {"lm": (moved, "lm", "llama")})
    assert "lm.lm_head.weight" in str(err.value) and "not taken as tied" in str(err.value)


def test_blip2_qformer_matches_transformers(tmp_path):
    """BLIP-2's Q-Former (part "qformer", its query tokens from the checkpoint's top) over
    the same image features as transformers' Q-Former."""
    T = transformers
    torch.manual_seed(0)
    config = T.Blip2Config(
        vision_config=dict(hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=32, image_size=16, patch_size=4),
        qformer_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                            intermediate_size=48, encoder_hidden_size=24,
                            cross_attention_frequency=2, vocab_size=64,
                            max_position_embeddings=16),
        text_config=dict(model_type="opt", hidden_size=32, num_hidden_layers=1, ffn_dim=48,
                         num_attention_heads=4, vocab_size=64, max_position_embeddings=32,
                         word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                         eos_token_id=2),
        num_query_tokens=6)
    hf = T.Blip2Model(config).eval()
    with torch.no_grad():
        hf.query_tokens.normal_()
    folder = _save(hf, tmp_path / "blip2")
    spec = _spec(tmp_path, """
model q {
  input feats: Seq[B, 17, 24]
  connector qf: qformer(queries=6, width=32, depth=3, heads=4, mlp=48, cross_every=2)
  output qf(feats) as out
}
""")
    model, _ = _model(spec, {"qf": (folder, "qformer", "blip2_qformer")})
    feats = torch.randn(2, 17, 24)
    with torch.no_grad():
        ours = model(feats=feats)["out"]
        theirs = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1),
                            encoder_hidden_states=feats).last_hidden_state
    assert _diff(ours, theirs) <= TOL


def test_siglip_vision_last_hidden_state_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=48,
                                             image_size=16, patch_size=4)
    hf = transformers.SiglipVisionModel(config).eval()
    folder = _save(hf, tmp_path / "siglip")
    spec = _spec(tmp_path, """
model s {
  input image: Image[B, 3, 16, 16]
  encoder vision: vit(patch=4, width=32, depth=2, heads=4, mlp=48, act="gelu_tanh",
                      cls_token=false, norm_eps=1e-6)
  output vision(image) as out
}
""")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = _model(spec, {"vision": (folder, None, "siglip_vision")})
    assert any("head.probe" in str(w.message) for w in caught)
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = model(image=image)["out"]
        theirs = hf(pixel_values=image).last_hidden_state
    assert _diff(ours, theirs) <= TOL


def test_a_llama_declared_by_its_folder_alone_loads_with_parity(tmp_path):
    """causal_lm() pretrained("llama"): check fills every size (GQA heads, the head's tying,
    the norms' epsilon) from config.json and the loader takes the weights."""
    from mmgraph.build import load

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, vocab_size=64,
                                      max_position_embeddings=64, rms_norm_eps=1e-5)
    hf = transformers.LlamaForCausalLM(config).eval()
    _save(hf, tmp_path / "llama")
    spec = _spec(tmp_path, """
model lm_only {
  input text: Tokens[B, 10]
  decoder lm: causal_lm() pretrained("llama")
  output lm(tokens=text) as logits
}
""")
    model = load(spec).eval()
    assert model.lm.layers[0].attn.kv_heads == 2
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert _diff(model(text=tokens)["logits"], hf(input_ids=tokens).logits) <= TOL


def test_eval_without_a_checkpoint_takes_the_pretrained_parts(clip, tmp_path, monkeypatch,
                                                              capsys):
    from mmgraph.cli import main
    from mmgraph.train.run import load_trained

    hf, folder = clip
    spec = _vision_spec(tmp_path)
    assert main(["eval", str(spec)]) == 2  # no pretrained part: random weights refused
    assert "give --checkpoint" in capsys.readouterr().err
    _pretend_pretrained(monkeypatch, folder)
    model, _, path = load_trained(spec, None)
    assert path is None and not model.training
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = hf.vision_model(pixel_values=image).pooler_output
        assert _diff(model(image=image)["out"], theirs) <= TOL


def test_a_run_records_its_pretrained_sources(clip, tmp_path, monkeypatch):
    import hashlib
    import json

    from mmgraph.train.run import train

    _, folder = clip
    _pretend_pretrained(monkeypatch, folder)
    train(_spec(tmp_path, TRAIN_SPEC), out=tmp_path / "run", max_steps=1, quiet=True)
    (state,) = (tmp_path / "run" / "checkpoints").glob("step-*/state.json")
    record = json.loads(state.read_text())["pretrained"]
    weights = (folder / "model.safetensors").read_bytes()
    assert record == {"vision": {"path": str(folder), "part": "vision_model",
                                 "family": "clip_vision",
                                 "files": {"model.safetensors":
                                           hashlib.sha256(weights).hexdigest()}}}
