"""Generation from an export folder: the prefill/decode ONNX graphs pick the same tokens as the
torch model with and without its KV cache (per-step logits within 1e-4), batched prompts of
different lengths get their own tokens, seeded sampling agrees, the manifest describes the
graphs (and TensorRT profiles span the past length, Triton gets the models and the loop),
and a user's mistakes are InputErrors naming the input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from mmgraph import sampling
from mmgraph.build import instantiate, load_class
from mmgraph.errors import InputError
from mmgraph.export import decoder, targets
from mmgraph.export.onnx_parts import export
from mmgraph.runtime import open_export
from mmgraph.runtime.manifest import ManifestError

from conftest import ROOT
from tiny import TINY

GENERATORS = ["llava", "blip2", "flamingo", "llamafusion"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (export folder, manifest, the torch model with the exported weights)."""
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            manifest = export(ROOT / "specs" / f"{name}.mmg", out, targets.load("onnx"),
                              overrides=TINY[name], log=lambda _: None)
            cls, g = load_class(ROOT / "specs" / f"{name}.mmg", None, **TINY[name])
            torch.manual_seed(0)  # export's seed: the same weights
            model = instantiate(cls, g, pretrained=False).eval()
            cache[name] = (out, manifest, model)
        return cache[name]

    return get


def image(seed: int = 1, size: int = 28, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, size, size)).astype(np.float32)


def context(pipeline, rows: int = 1, seed: int = 1) -> dict[str, np.ndarray]:
    """Random values of the export's context inputs (image, latents...), `rows` rows."""
    rng = np.random.default_rng(seed)
    return {c.name: rng.standard_normal((rows, *c.shape[1:])).astype(np.float32)
            for c in pipeline.generation.context}


def torched(values: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in values.items()}


def recorded(monkeypatch):
    """Every logits array the sampling loop chooses from, in order."""
    seen: list[np.ndarray] = []
    choose = sampling.choose

    def spy(logits, history, s, rng):
        seen.append(np.array(logits, dtype=np.float64))
        return choose(logits, history, s, rng)

    monkeypatch.setattr(sampling, "choose", spy)
    return seen


@pytest.mark.parametrize("name", GENERATORS)
def test_greedy_tokens_agree_on_torch_with_and_without_cache_and_onnxruntime(
        name, exported, monkeypatch):
    out, _, model = exported(name)
    pipeline = open_export(out)
    prompts = [[5, 9, 2, 7], [1, 3, 3, 8]]  # one length: torch without a cache takes no padding
    ctx = context(pipeline)
    logits = {}
    tokens = {}
    for backend, run in (
            ("cache", lambda: model.generate(prompts, max_new_tokens=6, **torched(ctx))),
            ("recompute", lambda: model.generate(prompts, max_new_tokens=6, cache=False,
                                                 **torched(ctx))),
            ("onnxruntime", lambda: pipeline.generate(prompts, max_new_tokens=6, **ctx))):
        seen = recorded(monkeypatch)
        tokens[backend] = run()
        logits[backend] = np.stack(seen)
        monkeypatch.undo()
    assert tokens["cache"] == tokens["recompute"] == tokens["onnxruntime"]
    assert all(len(row) == 6 for row in tokens["onnxruntime"])
    assert logits["onnxruntime"].shape == (6, 2, 64)
    for backend in ("recompute", "onnxruntime"):
        diff = np.abs(logits[backend] - logits["cache"]).max()
        assert diff <= 1e-4, (name, backend, diff)


@pytest.mark.parametrize("name", GENERATORS)
def test_batched_prompts_of_different_lengths_get_their_own_tokens(name, exported):
    out, _, model = exported(name)
    pipeline = open_export(out)
    prompts = [[4, 8, 15, 16, 23, 42], [7], [9, 9, 1]]
    ctx = context(pipeline)
    together = pipeline.generate(prompts, max_new_tokens=5, pad_id=0, **ctx)
    alone = [pipeline.generate([p], max_new_tokens=5, **ctx)[0] for p in prompts]
    assert together == alone
    assert together == model.generate(prompts, max_new_tokens=5, **torched(ctx))
    # one context row per prompt: row i of the batch is prompt i with context i
    rows = context(pipeline, rows=3, seed=3)
    per_row = pipeline.generate(prompts, max_new_tokens=4, **rows)
    assert per_row == [pipeline.generate([p], max_new_tokens=4,
                                         **{k: v[i:i + 1] for k, v in rows.items()})[0]
                       for i, p in enumerate(prompts)]


@pytest.mark.parametrize("name", GENERATORS)
def test_seeded_sampling_picks_the_same_tokens_on_torch_and_onnxruntime(name, exported):
    out, _, model = exported(name)
    pipeline = open_export(out)
    prompts = [[2, 4, 6], [1, 1]]
    ctx = context(pipeline)
    settings = dict(max_new_tokens=8, temperature=0.9, top_k=20, top_p=0.95,
                    repetition_penalty=1.2, seed=7)
    got = pipeline.generate(prompts, **ctx, **settings)
    assert got == model.generate(prompts, **torched(ctx), **settings)
    assert got != pipeline.generate(prompts, **ctx, **{**settings, "seed": 8})


def test_streaming_and_stop_tokens(exported):
    out, _, model = exported("llava")
    pipeline = open_export(out)
    full = pipeline.generate([[3, 1, 4]], image=image(), max_new_tokens=6)[0]
    stop = full[2]
    streamed = []
    got = pipeline.generate([[3, 1, 4]], image=image(), max_new_tokens=6, stop=(stop,),
                            on_token=lambda row, t: streamed.append((row, t)))
    assert got == [full[:full.index(stop) + 1]] and streamed == [(0, t) for t in got[0]]


@pytest.mark.parametrize("name", GENERATORS[:3])
def test_the_manifest_describes_the_decoder_graphs(name, exported):
    out, manifest, _ = exported(name)
    section = manifest["generate"]
    assert json.loads((out / "manifest.json").read_text())["generate"]["vocab"] == 64
    prefill, decode = section["prefill"], section["decode"]
    assert section["context"]["reuses_part"] == "visual"  # the spec's visual part serves
    for graph in (prefill, decode):
        for output, errors in graph["parity"]["fp32"].items():
            assert set(errors["at"]) == {"min", "opt", "max"}, output
            assert errors["max_abs"] <= 1e-4, (graph["name"], output, errors)
        proto = onnx.load(str(out / graph["onnx"]))
        assert [i.name for i in proto.graph.input] == [i["name"] for i in graph["inputs"]]
        assert [o.name for o in proto.graph.output] == [o["name"] for o in graph["outputs"]]
    layers = section["self_layers"]
    assert [o["name"] for o in prefill["outputs"]][:3] == ["logits", "present.0.key",
                                                           "present.0.value"]
    past = [i for i in decode["inputs"] if i["name"].startswith("past_key_values.")]
    assert len(past) == 2 * layers and past[0]["shape"][2] == "past_len"
    prefix = section["prefix"]
    assert prefix == (0 if name == "flamingo" else 4)
    # the past length spans a prompt of 1 token to T max - 1 tokens after the prefix
    assert (past[0]["min"][2], past[0]["max"][2]) == (prefix + 1, prefix + 2047 if name != "blip2"
                                                      else prefix + 511)
    cross = [i["name"] for i in decode["inputs"] if i["name"].startswith("cross.")]
    assert len(cross) == (2 * section["cross_layers"]) and bool(cross) == (name == "flamingo")
    assert section["frontier"][0] not in [i["name"] for i in decode["inputs"]]


def test_an_fp16_tensorrt_target_gates_and_profiles_the_decoder_graphs(exported, tmp_path):
    out = tmp_path / "trt"
    manifest = export(ROOT / "specs" / "llava.mmg", out, targets.load("tensorrt-fp16"),
                      overrides=TINY["llava"], log=lambda _: None)
    section = manifest["generate"]
    for key in ("prefill", "decode"):
        graph = section[key]
        assert (out / graph["onnx_fp16"]).is_file()
        assert graph["parity"]["fp16"]["logits"]["max_abs"] < 1e-2  # recorded, like parts'
        report = manifest["tensorrt"]["compatibility"][graph["name"]]
        assert report["ok"] and report["onnx"].endswith(".fp16.onnx")
        # positions are counted in float32, the type TensorRT's CumSum and Clip take
        assert report["findings"] == [], report["findings"]
    assert [g["name"] for g in decoder.trt_graphs(manifest)] == ["generate_prefill",
                                                                 "generate_decode"]
    script = (out / "build_engine.sh").read_text()
    assert "--saveEngine=generate_decode.engine" in script
    assert "past_key_values.0.key:1x2x5x16" in script  # min: a 1-token prompt after 4 visual
    assert "past_key_values.0.key:8x2x2051x16" in script  # max: T max - 1 tokens after them
    # the fp16 graphs generate on onnxruntime too (their tokens may differ from fp32's)
    half = open_export(out, precision="fp16", providers=["CPUExecutionProvider"])
    tokens = half.generate([[3, 1, 4], [1, 5]], image=image(), max_new_tokens=4)
    assert [len(row) for row in tokens] == [4, 4]
    with pytest.raises(ManifestError, match="visual.engine.*not built yet"):
        open_export(out, backend="tensorrt").generate([[1]], image=image())


def test_triton_repository_serves_the_decoder_graphs_and_documents_the_loop(exported,
                                                                             tmp_path):
    pytest.importorskip("tritonclient")
    from mmgraph.export.triton import validate_repository, write_repository

    out, manifest, _ = exported("flamingo")
    repo = write_repository(manifest, out, tmp_path / "triton")
    assert validate_repository(repo) == []
    assert (repo / "flamingo_generate_decode" / "1" / "model.onnx").is_file()
    assert not (repo / "flamingo_generate_context").exists()  # the visual part serves
    readme = (repo / "GENERATE.md").read_text()
    assert "flamingo_generate_prefill" in readme and "cross.N.key/value" in readme


def test_a_model_without_a_matching_part_gets_its_own_context_graph(tmp_path):
    """No export block: the one part takes the tokens too, so the context graph is written."""
    from mmgraph.compiler import build_graph

    spec = tmp_path / "llava_one_part.mmg"
    text = (ROOT / "specs" / "llava.mmg").read_text()
    spec.write_text(text.replace("    part visual: image -> v", "")
                    .replace("    part text:   v, prompt -> logits", "")
                    .replace("dim T = 1..2048 @ 256", "dim T = 1..16 @ 4"))
    assert build_graph(spec, TINY["llava"]).decoding is not None
    manifest = export(spec, tmp_path / "out", targets.load("onnx"), overrides=TINY["llava"],
                      log=lambda _: None)
    context = manifest["generate"]["context"]
    assert context["name"] == "generate_context" and "reuses_part" not in context
    assert context["parity"]["fp32"]["v"]["max_abs"] <= 1e-4
    pipeline = open_export(tmp_path / "out")
    cls, g = load_class(spec, None, **TINY["llava"])
    torch.manual_seed(0)
    model = instantiate(cls, g, pretrained=False).eval()
    assert pipeline.generate([[1, 2, 3]], image=image(), max_new_tokens=5) == \
        model.generate([[1, 2, 3]], image=torch.from_numpy(image()), max_new_tokens=5)
    assert pipeline.generation.max_tokens == 16
    with pytest.raises(InputError, match=r"input 'prompt'.*need 17 token positions"):
        pipeline.generate([[1] * 12], image=image(), max_new_tokens=6)


def test_a_text_only_model_generates_without_a_context_graph_and_serves_on_triton(tmp_path):
    pytest.importorskip("tritonclient")
    spec = tmp_path / "lm.mmg"
    spec.write_text("""model lm {
  input prompt: Tokens[B, T]
  decoder lm: causal_lm(vocab=64, width=32, depth=2, heads=2, ffn=64, norm="rms", pos="rope",
                        act="swiglu", max_len=64)
  logits = lm(tokens=prompt)
  output logits
  export {
    dim B = 1..4 @ 1
    dim T = 1..32 @ 8
  }
}
""")
    out = tmp_path / "out"
    manifest = export(spec, out, targets.load("triton"), log=lambda _: None)
    assert manifest["generate"]["context"] is None and manifest["generate"]["prefix"] == 0
    assert sorted(p.name for p in (out / "triton").iterdir()) == [
        "GENERATE.md", "lm", "lm_generate_decode", "lm_generate_prefill", "lm_lm"]
    pipeline = open_export(out)
    assert pipeline.generation.context == []
    cls, g = load_class(spec)
    torch.manual_seed(0)
    model = instantiate(cls, g, pretrained=False).eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [3, 4]]
    assert pipeline.generate(prompts, max_new_tokens=6) == model.generate(prompts,
                                                                          max_new_tokens=6)


def test_a_joined_picture_counts_in_the_past_length(exported):
    """LlamaFusion joins 16 picture tokens before the text: logits cover the text only, but
    the cache holds the picture too, and the past length ranges say so."""
    out, manifest, _ = exported("llamafusion")
    section = manifest["generate"]
    assert section["prefix"] == 16 and section["context"]["name"] == "generate_context"
    assert section["dims"]["past_len"] == {"min": 17, "opt": 272, "max": 2063}
    assert open_export(out).generation.max_tokens == 2048 - 16  # max_len 2048 holds both


# ---------------------------------------------------------------- what the CLI reads


def test_the_pipeline_says_what_generating_needs(exported):
    out, _, _ = exported("blip2")
    info = open_export(out).generation
    assert (info.tokens, info.vocab, info.max_tokens, info.max_batch) == ("prompt", 64, 512, 8)
    (ctx,) = info.context
    assert (ctx.name, ctx.kind, ctx.dtype, ctx.shape) == ("image", "Image", "float32",
                                                          ("B", 3, 28, 28))


# ---------------------------------------------------------------- mistakes


@pytest.mark.parametrize("call, match", [
    (dict(tokens=[[1] * 2048], max_new_tokens=2), r"input 'prompt'.*2049 token positions"),
    (dict(tokens=[[1, 2]], image=image(size=32)), r"input 'image': axis 2 must be 28, got 32"),
    (dict(tokens=[[1, 2]], stop=(64,)), r"stop tokens: token id 64"),
    (dict(tokens=[[1, 64]]), r"input 'prompt': token id 64 at \[0, 1\]"),
    (dict(tokens=[[1, 2]], imag=image()), r"no input or sampling setting 'imag'.*'image'"),
    (dict(tokens=[[1, 2]], temperature=-1), r"temperature"),
    (dict(tokens=[[1, 2]], image=image(rows=2)), r"input 'image' has 2 rows for 1 prompts"),
    (dict(tokens=[[1]] * 9), r"9 prompts, but the export takes at most 8"),
    (dict(tokens=[[1, 2]], pad_id=99), r"pad_id 99"),
    (dict(tokens=[[]]), r"at least one token"),
])
def test_mistakes_are_input_errors_naming_the_input(exported, call, match):
    out, _, _ = exported("llava")
    pipeline = open_export(out)
    tokens = call.pop("tokens")
    call.setdefault("image", image())
    if "imag" in call:
        call.pop("image")
    with pytest.raises(InputError, match=match):
        pipeline.generate(tokens, **call)


def test_an_export_that_cannot_generate_says_why(tmp_path):
    export(ROOT / "specs" / "zipper.mmg", tmp_path, targets.load("onnx"),
           overrides=TINY["zipper"], log=lambda _: None)
    pipeline = open_export(tmp_path)
    assert pipeline.generation is None
    with pytest.raises(InputError, match=r"cannot generate: layer 'towers.0.speech_from_text'"
                                         r".*zipper.mmg:\d+"):
        pipeline.generate([[1, 2]])


def test_a_damaged_decoder_graph_is_a_manifest_error(exported, tmp_path):
    import shutil

    out, _, _ = exported("llava")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "generate_decode.onnx", "ab") as f:
        f.write(b"x")
    pipeline = open_export(copy)  # the parts are fine; the decoder opens on first use
    with pytest.raises(ManifestError, match="generate_decode.onnx"):
        pipeline.generate([[1, 2]], image=image())


def test_a_prefix_given_as_an_input_generates_from_the_export(tmp_path):
    """The caller's own prefix (an input read as it is) is the step's context: the context
    graph passes it on under another name, as ONNX cannot name an output after its input."""
    spec = tmp_path / "p.mmg"
    spec.write_text("""model p {
  input prefix: Seq[B, 4, 16]
  input text: Tokens[B, T]
  decoder lm: causal_lm(vocab=32, width=16, depth=1, heads=2, ffn=32)
  logits = lm(prefix=prefix, tokens=text)
  output logits
  export {
    dim B = 1..2 @ 1
    dim T = 1..8 @ 4
  }
}
""")
    manifest = export(spec, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    assert manifest["generate"]["frontier"] == ["prefix_context"]
    cls, g = load_class(spec, None)
    torch.manual_seed(0)  # export builds its random weights the same way
    model = instantiate(cls, g, pretrained=False).eval()
    prefix = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    prompts = [[1, 2, 3], [4]]
    assert open_export(tmp_path / "out").generate(prompts, prefix=prefix.numpy(),
                                                  max_new_tokens=5) == \
        model.generate(prompts, prefix=prefix, max_new_tokens=5)


def test_the_spec_chat_template_travels_with_the_export(tmp_path):
    """`generate --chat` on an export folder wraps prompts the way training did: the spec's
    chat_template is recorded in the manifest and read back by the runtime."""
    text = (ROOT / "specs" / "llava.mmg").read_text()
    spec = tmp_path / "chat.mmg"
    spec.write_text(text.replace("    optimizer = adamw\n",
                                 '    optimizer = adamw\n    chat_template = "chatml"\n', 1))
    manifest = export(spec, tmp_path / "out", targets.load("onnx"), overrides=TINY["llava"],
                      log=lambda _: None)
    assert manifest["generate"]["chat_template"] == "chatml"
    assert open_export(tmp_path / "out").generation.chat_template == "chatml"


SLICED_CROSS = """
model slice_xattn {
  input image: Seq<image>[B, 4, 16]
  input prompt: Tokens[B, T]
  layer embed: token_embedding(vocab=64, width=16)
  fusion look: cross_attention(heads=2)
  layer lm: transformer_layer(heads=2, causal=true, pos="rope")
  head out: lm_head(vocab=64)
  h = concat(image, embed(prompt))
  v = h[:4] + look(h[:4], image)
  logits = out(lm(concat(v, h[4:])))
  output logits
  export { dim B = 1..2 @ 1
           dim T = 1..8 @ 4 }
}
"""


def test_a_layer_on_the_prefix_slice_has_no_rows_in_a_decode_step(tmp_path):
    """Cambrian's in-LLM aggregators read `h[:576]`: in a decode step that slice is empty, and
    attention over zero queries must give zero rows (it crashed reshaping to [b, 0, -1])."""
    spec = tmp_path / "slice_xattn.mmg"
    spec.write_text(SLICED_CROSS)
    manifest = export(spec, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    for graph in ("prefill", "decode"):
        errors = manifest["generate"][graph]["parity"]["fp32"]
        assert "logits" in errors and all(e["max_abs"] <= 1e-4 for e in errors.values()), graph


CROSS_TO_PROMPT = """
model xattn_prompt {
  input image: Image[B, 3, 32, 32]
  input prompt: Tokens[B, S]
  input target: Tokens[B, T]
  encoder patches: patch_embed(patch=16, width=32)
  layer embed: token_embedding(vocab=64, width=32, pos="learned", max_len=96)
  encoder enc: transformer(depth=1, heads=2, width=32)
  decoder dec: transformer_decoder(depth=1, heads=2, causal=true)
  head out: lm_head(vocab=64, tie="embed")
  ctx = enc(concat(patches(image), embed(prompt)))
  logits = out(dec(embed(target), ctx=ctx))
  output logits
  export {
    dim B = 1..2 @ 1
    dim S = 1..80 @ 16
    dim T = 1..32 @ 8
  }
}
"""


def test_cross_keys_values_follow_a_context_whose_length_is_an_export_dim(tmp_path,
                                                                          monkeypatch):
    """UnIVAL-style: the decoder cross-attends to 4 patches + a prompt of S tokens. The cross
    keys/values were shaped at the opt size (4 + 16 = 20) and onnxruntime refused the min
    size's 5 (an internal error); their length is the context's own dim `4 + S` now."""
    from mmgraph.compiler import build_graph

    spec = tmp_path / "xattn_prompt.mmg"
    spec.write_text(CROSS_TO_PROMPT)
    out = tmp_path / "out"
    manifest = export(spec, out, targets.load("onnx"), log=lambda _: None)
    section = manifest["generate"]
    assert section["cross_layers"] == 1 and section["frontier"] == ["ctx"]
    cross = ["cross.0.key", "cross.0.value"]
    for graph, where in (("prefill", "outputs"), ("decode", "inputs")):
        entry = section[graph]
        infos = {i["name"]: i for i in entry[where]}
        proto = onnx.load(str(out / entry["onnx"]))
        values = {v.name: v for v in getattr(proto.graph, where[:-1])}  # input, output
        for name in cross:
            assert infos[name]["shape"] == ["B", 2, "4 + S", 16]
            axis = values[name].type.tensor_type.shape.dim[2]
            assert axis.dim_param == "4+S" and not axis.HasField("dim_value"), (graph, name)
        # per-step parity at the min/opt/max sizes, the context's length with them
        for output, errors in entry["parity"]["fp32"].items():
            assert {p: e["dims"]["S"] for p, e in errors["at"].items()} == \
                {"min": 1, "opt": 16, "max": 80}, (graph, output)
            assert errors["max_abs"] <= 1e-4, (graph, output, errors)
    assert {p: section["decode"]["inputs"][-1][p][2] for p in ("min", "opt", "max")} == \
        {"min": 5, "opt": 20, "max": 84}
    assert "cross_len_0" not in section["dims"]  # named after the context's dim, not its own

    cls, g = load_class(spec, None)
    torch.manual_seed(0)
    model = instantiate(cls, g, pretrained=False).eval()
    pipeline = open_export(out)
    prompts = [[5, 9, 2, 7], [1, 3]]
    picture = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    logits = []
    for length in (3, 50):
        instruction = np.random.default_rng(length).integers(0, 64, (1, length))
        seen = recorded(monkeypatch)
        got = pipeline.generate(prompts, image=picture, prompt=instruction, max_new_tokens=6)
        monkeypatch.undo()
        assert got == model.generate(prompts, image=torch.from_numpy(picture),
                                     prompt=torch.from_numpy(instruction), max_new_tokens=6)
        logits.append(np.stack(seen))
    assert np.abs(logits[0] - logits[1]).max() > 1e-3  # the two contexts are read

    # TensorRT's decode profile spans the context's length, min..max
    script = export(spec, tmp_path / "trt", targets.load("tensorrt-fp16"), log=lambda _: None)
    text = (tmp_path / "trt" / "build_engine.sh").read_text()
    assert script["generate"]["decode"]["inputs"][-1]["shape"][2] == "4 + S"
    assert "cross.0.key:1x2x5x16" in text and "cross.0.value:2x2x84x16" in text

    # a cross length that no context dim explains gets a decoder dim of its own
    graphs = decoder.DecoderGraphs(model, build_graph(spec), {
        "B": {"min": 1, "opt": 1, "max": 2}, "S": {"min": 1, "opt": 16, "max": 80},
        "T": {"min": 1, "opt": 8, "max": 32}})
    assert graphs.cross_shapes == [(2, "4 + S", 16)]
    assert graphs._cross_length(0, {"min": 7, "opt": 7, "max": 7}) == 7
    assert graphs._cross_length(0, {"min": 3, "opt": 6, "max": 9}) == "cross_len_0"
    assert graphs.gen_dims()["cross_len_0"] == {"min": 3, "opt": 6, "max": 9}
