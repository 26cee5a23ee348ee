"""`pretrained(PATH, part="...")`: `mmgraph check` reads the folder's config.json (and no torch),
fills the parameters a spec leaves out, and reports each disagreement at the parameter.

The folders are tiny configs saved with transformers' `save_pretrained` (config only: check
reads nothing else)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmgraph.cli import main
from mmgraph.compiler import check_file

transformers = pytest.importorskip("transformers", reason="transformers is not installed")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, vocab_size=100, max_position_embeddings=16),
        vision_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, image_size=32, patch_size=8),
        projection_dim=16).save_pretrained(root / "clip")
    transformers.CLIPVisionConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=128, image_size=32,
                                  patch_size=16).save_pretrained(root / "clip_vision_big")
    transformers.LlamaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=80,
                             max_position_embeddings=64).save_pretrained(root / "llama")
    transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, image_size=32,
                           patch_size=8).save_pretrained(root / "vit")
    transformers.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=40).save_pretrained(root / "bert")
    return root


CLIP_SPEC = """\
ckpt = "{ckpt}"
model m {{
  input image: Image[B, 3, 32, 32]
  input text: Tokens[B, 16]
  encoder vision: vit(pool="cls"{vision}) pretrained(ckpt, part="vision_model") frozen
  encoder texter: text_transformer(pool="eot") pretrained(ckpt, part="text_model")
  connector ip: linear() pretrained(ckpt, part="visual_projection")
  connector tp: linear() pretrained(ckpt, part="text_projection")
  a = ip(vision(image))
  b = tp(texter(text))
  output a, b
}}
"""


def spec(folder: Path, text: str, name: str = "m.mmg") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def clip_spec(folder: Path, ckpt: str = "clip", vision: str = "") -> Path:
    return spec(folder, CLIP_SPEC.format(ckpt=ckpt, vision=vision))


def errors(result):
    return [(d.code, d.span.line, d.span.col, d.message) for d in result.errors]


def test_clip_parts_check_and_fill_from_config(ckpts):
    result = check_file(clip_spec(ckpts))
    assert result.ok, errors(result)
    g = result.graphs["m"]
    vision, texter, ip = g.instances["vision"], g.instances["texter"], g.instances["ip"]
    assert (vision.params.width, vision.params.depth, vision.params.heads, vision.params.mlp,
            vision.params.patch, vision.params.act) == (48, 2, 4, 96, 8, "quick_gelu")
    assert vision.params.pre_norm is True and vision.params.patch_bias is False
    assert (texter.params.vocab, texter.params.width, texter.params.max_len,
            texter.params.causal) == (100, 32, 16, True)
    assert ip.params.out == 16 and ip.params.bias is False
    assert vision.pretrained.path == str(ckpts / "clip")
    assert vision.pretrained.part == "vision_model"
    assert vision.pretrained.family == "clip_vision"
    assert texter.pretrained.family == "clip_text"
    assert ip.pretrained.family == "clip_projection"
    assert g.instances["tp"].pretrained.part == "text_projection"
    assert vision.frozen and "width" not in vision.param_spans  # filled, not written
    assert str(g.nodes["vision"].types["out"]) == "Vec<image>[B, 48]"


def test_a_disagreement_is_reported_at_the_parameter(ckpts):
    result = check_file(clip_spec(ckpts, vision=", width=64, depth=2"))
    assert errors(result) == [(
        "E209", 5, 41, "vision: width = 64 in the spec, but the checkpoint has "
                       "vision_config.hidden_size = 48 (clip/config.json)")]
    assert "leave width out" in result.errors[0].hint


def test_a_parameter_the_architecture_fixes(ckpts):
    result = check_file(clip_spec(ckpts, vision=", pre_norm=false"))
    [(code, line, col, message)] = errors(result)
    assert (code, line, col) == ("E209", 5, 44)
    assert message == ("vision: pre_norm = false in the spec, but a clip_vision checkpoint "
                       "needs pre_norm = true")


def test_every_disagreement_is_reported(ckpts):
    result = check_file(clip_spec(ckpts, vision=', width=64, heads=4, act="gelu"'))
    got = errors(result)
    assert [(c, line, col) for c, line, col, _ in got] == [("E209", 5, 41), ("E209", 5, 58)]
    assert "vision_config.hidden_act" in got[1][3] and '"quick_gelu"' in got[1][3]


def test_set_repoints_the_constant(ckpts, tmp_path, capsys):
    path = clip_spec(tmp_path, ckpt="nowhere")  # relative to the spec: missing there
    assert check_file(path).errors[0].code == "E210"
    result = check_file(path, overrides={"ckpt": str(ckpts / "clip")})
    assert result.ok, errors(result)
    # and to another checkpoint: its sizes are filled
    big = spec(tmp_path, """\
        ckpt = "nowhere"
        model m {
          input image: Image[B, 3, 32, 32]
          encoder vision: vit(pool="cls") pretrained(ckpt)
          output vision(image) as v
        }
        """, "big.mmg")
    result = check_file(big, overrides={"ckpt": str(ckpts / "clip_vision_big")})
    assert result.ok, errors(result)
    p = result.graphs["m"].instances["vision"].params
    assert (p.width, p.depth, p.patch) == (64, 3, 16)
    code = main(["check", str(big), "--set", f'ckpt="{ckpts / "clip_vision_big"}"',
                 "--verbose"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "vit(width=64, depth=3, heads=4, mlp=128, act=\"quick_gelu\", patch=16" in out


def test_a_relative_path_is_relative_to_the_spec(ckpts, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    assert check_file(clip_spec(ckpts)).ok


def test_llama_gqa_fills_and_disagrees(ckpts):
    text = """\
        model lm {
          input tokens: Tokens[B, 8]
          decoder llm: causal_lm(%s) pretrained("llama")
          output llm(tokens=tokens) as logits
        }
        """
    result = check_file(spec(ckpts, text % ""))
    assert result.ok, errors(result)
    inst = result.graphs["lm"].instances["llm"]
    p = inst.params
    assert (p.vocab, p.width, p.depth, p.heads, p.kv_heads, p.ffn, p.max_len, p.tied, p.act,
            p.rope_theta) == (120, 32, 2, 4, 2, 80, 64, False, "swiglu", 10000.0)
    assert inst.pretrained.family == "llama" and inst.pretrained.part is None
    result = check_file(spec(ckpts, text % "kv_heads=4, tied=true"))
    got = errors(result)
    assert [(c, line, col) for c, line, col, _ in got] == [("E209", 3, 35), ("E209", 3, 43)]
    assert got[0][3] == ("llm: kv_heads = 4 in the spec, but the checkpoint has "
                         "num_key_value_heads = 2 (llama/config.json)")
    assert "tie_word_embeddings = false" in got[1][3]


def test_vit_and_bert(ckpts):
    text = """\
        model m {
          input image: Image[B, 3, 32, 32]
          input text: Tokens[B, 12]
          encoder v: vit(pool="cls") pretrained("vit")
          encoder t: text_transformer(pool="cls") pretrained("bert")
          output v(image) as img, t(text) as txt
        }
        """
    result = check_file(spec(ckpts, text))
    assert result.ok, errors(result)
    g = result.graphs["m"]
    v, t = g.instances["v"].params, g.instances["t"].params
    assert (v.width, v.patch, v.pre_norm, v.act) == (32, 8, False, "gelu")
    assert (t.vocab, t.width, t.max_len, t.type_vocab, t.post_norm_blocks, t.causal) == \
        (90, 32, 40, 2, True, False)
    assert g.instances["v"].pretrained.family == "vit"
    assert g.instances["t"].pretrained.family == "bert"


def one_error(folder: Path, modifier: str, component: str = 'vit(pool="cls")'):
    path = spec(folder, f"""\
        model m {{
          input image: Image[B, 3, 32, 32]
          encoder v: {component} {modifier}
          output v(image) as out
        }}
        """, "one.mmg")
    result = check_file(path)
    [d] = result.errors
    return d


def test_a_missing_folder(ckpts, tmp_path):
    d = one_error(tmp_path, 'pretrained("no/such")')
    assert (d.code, d.span.line, d.span.col) == ("E210", 3, 41)
    assert d.message == f"no checkpoint folder {tmp_path / 'no' / 'such'}"
    assert "save_pretrained" in d.hint and "--set" in d.hint


def test_a_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    d = one_error(tmp_path, 'pretrained("empty")')
    assert (d.code, d.span.line, d.span.col) == ("E210", 3, 41)
    assert d.message.startswith("the checkpoint folder has no config.json")


@pytest.mark.parametrize("content,message", [
    (b"{not json", "is not valid JSON (line 1, column 2)"),
    (b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
    (b"[1, 2]", "holds no JSON object"),
])
def test_a_bad_config(tmp_path, content, message):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_bytes(content)
    d = one_error(tmp_path, 'pretrained("bad")')
    assert (d.code, d.span.line, d.span.col) == ("E210", 3, 41)
    assert d.message.endswith(message)


def test_a_config_that_is_not_a_file(tmp_path):
    (tmp_path / "odd" / "config.json").mkdir(parents=True)
    d = one_error(tmp_path, 'pretrained("odd")')
    assert d.code == "E210" and d.message.endswith("is not a regular file")


def test_an_oversized_config(tmp_path, monkeypatch):
    from mmgraph.ir import hf_config
    monkeypatch.setattr(hf_config, "MAX_CONFIG_BYTES", 10)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.json").write_text('{"model_type": "vit"}')
    d = one_error(tmp_path, 'pretrained("big")')
    assert d.code == "E210" and "more than a config.json holds" in d.message


def test_an_unknown_model_type(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "gpt_neo"}')
    d = one_error(tmp_path, 'pretrained("odd")')
    assert (d.code, d.span.line, d.span.col) == ("E210", 3, 41)
    assert d.message == ('the checkpoint\'s config.json has model_type "gpt_neo", which no '
                         'mapping table reads')
    assert "clip" in d.hint and "llama" in d.hint


def test_an_unknown_part(ckpts):
    d = one_error(ckpts, 'pretrained("clip", part="audio_model")')
    assert (d.code, d.span.line, d.span.col) == ("E210", 3, 54)
    assert d.message == 'a clip checkpoint has no part "audio_model"'
    assert "vision_model" in d.hint and "text_projection" in d.hint


def test_a_composite_checkpoint_needs_a_part(ckpts):
    d = one_error(ckpts, 'pretrained("clip")')
    assert (d.code, d.span.line, d.span.col) == ("E210", 3, 30)
    assert "holds several parts" in d.message and 'part="..."' in d.hint


def test_a_part_of_another_component(ckpts):
    d = one_error(ckpts, 'pretrained("clip", part="text_model")')
    assert (d.code, d.span.col) == ("E210", 54)
    assert d.message == ("the text_model of a clip checkpoint is a text_transformer "
                         "(clip_text), not a vit")


def test_an_activation_without_counterpart(tmp_path):
    transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, hidden_act="gelu_new",
                           patch_size=8).save_pretrained(tmp_path / "vit_new")
    d = one_error(tmp_path, 'pretrained("vit_new")')
    assert d.code == "E210"
    assert d.message == ('the checkpoint\'s hidden_act is "gelu_new", which vit\'s act has no '
                         'counterpart for')


@pytest.mark.parametrize("modifier,code,message", [
    ('pretrained()', "E206", "pretrained takes one folder"),
    ('pretrained("clip", "x")', "E206", "pretrained takes one folder"),
    ('pretrained("clip", parts="x")', "E206", "pretrained has no setting 'parts'"),
    ('pretrained(3)', "E206", "pretrained needs a folder as a string"),
    ('pretrained("clip", part="vision_model") pretrained("clip", part="vision_model")', "E206",
     "'pretrained' is given twice"),
])
def test_bad_modifiers(ckpts, modifier, code, message):
    d = one_error(ckpts, modifier)
    assert d.code == code and d.message.startswith(message), d.message


def test_shared_layers_do_not_load(ckpts):
    path = spec(ckpts, """\
        model m {
          input image: Image[B, 3, 32, 32]
          encoder a: vit(pool="cls") pretrained("clip", part="vision_model")
          encoder b: vit(pool="cls") shared(a) pretrained("clip", part="vision_model")
          output a(image) as x, b(image) as y
        }
        """, "shared.mmg")
    [d] = check_file(path).errors
    assert (d.code, d.span.line) == ("E206", 4)


def test_check_reads_configs_without_torch(ckpts):
    path = clip_spec(ckpts)
    code = ("import sys\n"
            "from mmgraph.cli import main\n"
            f"assert main(['check', {str(path)!r}]) == 0\n"
            "assert 'torch' not in sys.modules, 'mmgraph check imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


LM_SPEC = """\
    model lm {
      input tokens: Tokens[B, 8]
      decoder llm: causal_lm() pretrained("%s")
      output llm(tokens=tokens) as logits
    }
    """


def test_opt_fills_its_fixed_architecture(tmp_path):
    transformers.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                           num_attention_heads=4, max_position_embeddings=64,
                           word_embed_proj_dim=32).save_pretrained(tmp_path / "opt")
    result = check_file(spec(tmp_path, LM_SPEC % "opt"))
    assert result.ok, errors(result)
    inst = result.graphs["lm"].instances["llm"]
    p = inst.params
    assert (p.vocab, p.width, p.depth, p.heads, p.ffn, p.max_len) == (100, 32, 2, 4, 64, 64)
    assert (p.norm, p.pos, p.act, p.bias, p.tied, p.pos_offset) == \
        ("layer", "learned", "relu", True, True, 2)
    assert inst.pretrained.family == "opt"


def test_what_the_component_cannot_express(tmp_path):
    transformers.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                           num_attention_heads=4, max_position_embeddings=64,
                           word_embed_proj_dim=16).save_pretrained(tmp_path / "opt350")
    [d] = check_file(spec(tmp_path, LM_SPEC % "opt350")).errors
    assert (d.code, d.span.line, d.span.col) == ("E210", 3, 39)
    assert d.message == ("the checkpoint's word_embed_proj_dim is 16, but causal_lm needs "
                         "hidden_size = 32")
    transformers.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                             head_dim=16).save_pretrained(tmp_path / "wide_heads")
    [d] = check_file(spec(tmp_path, LM_SPEC % "wide_heads")).errors
    assert d.code == "E210"
    assert d.message == ("the checkpoint's head_dim is 16, but causal_lm needs "
                         "hidden_size / num_attention_heads = 8.0")


def test_whisper_encoder_and_blip2_qformer(tmp_path):
    transformers.WhisperConfig(
        vocab_size=100, d_model=32, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
        num_mel_bins=16, max_source_positions=50,
        max_target_positions=20).save_pretrained(tmp_path / "whisper")
    transformers.Blip2Config(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, encoder_hidden_size=32, vocab_size=100),
        text_config=dict(model_type="opt", vocab_size=100, hidden_size=32, num_hidden_layers=1,
                         ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32),
        num_query_tokens=8).save_pretrained(tmp_path / "blip2")
    result = check_file(spec(tmp_path, """\
        model m {
          input mel: Mel[B, 16, 100]
          input feats: Seq[B, 17, 32]
          encoder audio: audio_encoder() pretrained("whisper", part="encoder")
          connector q: qformer(kv_width=32) pretrained("blip2", part="qformer")
          output audio(mel) as a, q(feats) as z
        }
        """))
    assert result.ok, errors(result)
    g = result.graphs["m"]
    a, q = g.instances["audio"].params, g.instances["q"].params
    assert (a.width, a.depth, a.heads, a.mlp, a.mels, a.max_frames) == (32, 2, 4, 64, 16, 100)
    assert (q.queries, q.width, q.depth, q.heads, q.mlp, q.cross_every, q.kv_width, q.vocab) == \
        (8, 32, 2, 4, 64, 2, 32, 0)
    assert (g.instances["audio"].pretrained.family, g.instances["q"].pretrained.family) == \
        ("whisper_encoder", "blip2_qformer")
    result = check_file(spec(tmp_path, """\
        model m {
          input feats: Seq[B, 17, 32]
          connector q: qformer(queries=4, kv_width=32) pretrained("blip2", part="qformer")
          output q(feats) as z
        }
        """, "q.mmg"))
    [d] = result.errors
    assert (d.code, d.span.line, d.span.col) == ("E209", 3, 32)
    assert d.message == ("q: queries = 4 in the spec, but the checkpoint has "
                         "num_query_tokens = 8 (blip2/config.json)")


def test_llava_parts(tmp_path):
    transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, image_size=32,
                           patch_size=8),
        text_config=dict(model_type="llama", vocab_size=120, hidden_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96)).save_pretrained(tmp_path / "llava")
    result = check_file(spec(tmp_path, """\
        model m {
          input image: Image[B, 3, 32, 32]
          input prompt: Tokens[B, 8]
          encoder vision: vit(select_layer=-2) pretrained("llava", part="vision_tower")
          connector proj: mlp() pretrained("llava", part="multi_modal_projector")
          decoder llm: causal_lm() pretrained("llava", part="language_model")
          output llm(prefix=proj(vision(image)), tokens=prompt) as logits
        }
        """))
    assert result.ok, errors(result)
    g = result.graphs["m"]
    v, p, lm = (g.instances[n].params for n in ("vision", "proj", "llm"))
    assert (v.width, v.patch, v.pre_norm) == (32, 8, True)
    assert (p.input, p.hidden, p.out, p.layers, p.act, p.bias) == (32, 48, 48, 2, "gelu", True)
    assert (lm.vocab, lm.width, lm.kv_heads) == (120, 48, 2)
    assert [g.instances[n].pretrained.family for n in ("vision", "proj", "llm")] == \
        ["clip_vision", "llava_projector", "llama"]


def test_qwen2_takes_attention_biases(tmp_path):
    transformers.Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64,
                             vocab_size=50).save_pretrained(tmp_path / "qwen2")
    result = check_file(spec(tmp_path, LM_SPEC % "qwen2"))
    assert result.ok, errors(result)
    inst = result.graphs["lm"].instances["llm"]
    assert inst.params.bias is True and inst.params.kv_heads == 2
    assert inst.pretrained.family == "llama"
    [d] = check_file(spec(tmp_path, (LM_SPEC % "qwen2").replace("causal_lm()",
                                                                "causal_lm(bias=false)"))).errors
    assert d.code == "E209" and "a llama checkpoint needs bias = true" in d.message
