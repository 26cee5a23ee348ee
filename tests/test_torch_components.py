"""Every registered component, built through a one-layer spec: the torch module's output has
the shape and dtype the checker inferred, and gradients reach its weights (or, for losses,
its inputs). The table must name every component, so adding one means adding its case."""

from __future__ import annotations

import inspect
import textwrap

import pytest
import torch

from mmgraph.backends.torch.codegen import face_expr
from mmgraph.backends.torch.inputs import TORCH_DTYPES, concrete_shape, example_inputs
from mmgraph.build import load
from mmgraph.components import nn as mm
from mmgraph.components import registry

IMG = "input x: Image[B, 3, 32, 32]"
SEQ = "input x: Seq[B, 6, 16]"
SEQ2 = "input x: Seq[B, 6, 16]\n  input c: Seq[B, 4, 8]"
VEC = "input x: Vec[B, 16]"
TOK = "input t: Tokens[B, 6]"

# component -> (inputs, expression producing the output)
CASES = {
    "vit": (IMG, "vit(patch=16, width=16, depth=1, heads=2, taps=[1])(x)"),
    "text_transformer": (TOK, 'text_transformer(vocab=32, width=16, depth=1, heads=2, '
                              'causal=true, pool="eot")(t)'),
    "audio_encoder": ("input x: Mel[B, 8, 10]", "audio_encoder(width=16, depth=1, heads=2, "
                                                "mels=8, max_frames=20)(x)"),
    "video_encoder": ("input x: Video[B, 3, 3, 32, 32]", "video_encoder(width=16, depth=1, "
                                                         "heads=2, patch=16)(x)"),
    "patch_embed": (IMG, "patch_embed(patch=16, width=16, cls_token=true)(x)"),
    "token_embedding": (TOK, 'token_embedding(vocab=32, width=16, pos="learned")(t)'),
    "point_tokenizer": ("input x: Points[B, 40, 3]", "point_tokenizer(groups=8, neighbours=4, "
                                                     "width=16)(x)"),
    "mel_patch_embed": ("input x: Mel[B, 32, 48]", "mel_patch_embed(patch=16, stride=10, "
                                                   "width=16)(x)"),
    "feature_embed": ("input x: Seq[B, 5, 12]\n  input b: Boxes[B, 5, 4]",
                      "feature_embed(width=16)(x, boxes=b)"),
    "linear": (SEQ, "linear(out=8)(x)"),
    "mlp": (SEQ, "mlp(out=8, hidden=32, layers=3)(x)"),
    "qformer": (SEQ, "qformer(queries=4, width=16, depth=2, heads=2, mlp=32)(x)"),
    "perceiver_resampler": (SEQ, "perceiver_resampler(latents=3, depth=1, heads=2, "
                                 "dim_head=8)(x)"),
    "pool": (SEQ, 'pool(x, mode="attention", heads=2)'),
    "token_merge": (SEQ, "token_merge(x, ratio=2)"),
    "prompt_tokens": (SEQ, "concat(prompt_tokens(n=3, width=16)(x), x)"),
    "layer_norm": (SEQ, "layer_norm(x)"),
    "rms_norm": (SEQ, "rms_norm(x)"),
    "tanh_gate": (SEQ, "x + tanh_gate(init=0.5)(x)"),
    "self_attention": (SEQ, 'self_attention(heads=2, causal=true, pos="rope")(x)'),
    "cross_attention": (SEQ2, "cross_attention(heads=2)(x, c)"),
    "gated_cross_attention": (SEQ2, "gated_cross_attention(heads=2, dim_head=8)(x, c)"),
    "co_attention": ("input x: Seq[B, 6, 16]\n  input c: Seq[B, 4, 16]\n"
                     "  layer co: co_attention(heads=2)", "concat(co(x, c), co(c, x).other)"),
    "ffn": (SEQ, 'ffn(act="swiglu", hidden=24)(x)'),
    "moe_ffn": (SEQ, "moe_ffn(experts=2, top_k=1, hidden=24)(x)"),
    "modality_ffn": ("input x: Seq<image>[B, 4, 16]\n  input y: Seq<text>[B, 3, 16]",
                     'modality_ffn(modalities=["image", "text"], hidden=24)(concat(x, y))'),
    "modality_attention": ("input x: Seq<image>[B, 4, 16]\n  input y: Seq<text>[B, T, 16]",
                           'modality_attention(heads=2, modalities=["image", "text"], '
                           'frozen_modalities=["text"])(concat(x, y))'),
    "transformer_layer": (SEQ2, "transformer_layer(heads=2, cross=true)(x, ctx=c)"),
    "transformer": (SEQ, "transformer(depth=2, heads=2, post_norm=true)(x)"),
    "gru": (SEQ, "concat(gru(hidden=8, bidirectional=true)(x), x)"),
    "lstm": (SEQ, "lstm(layers=2, dropout=0.1)(x)"),
    "mamba": (SEQ, "mamba(state=4, conv=3)(x)"),
    "concat": ("input x: Seq[B, 6, 16]\n  input y: Seq[B, 2, 16]", "concat(x, y)"),
    "concat_width": ("input x: Seq[B, 6, 16]\n  input y: Seq[B, 6, 4]", "concat_width(x, y)"),
    "causal_lm": ("input p: Seq[B, 3, 16]\n  " + TOK,
                  "causal_lm(vocab=32, width=16, depth=1, heads=4, kv_heads=2)(prefix=p, "
                  "tokens=t)"),
    "transformer_decoder": (SEQ2, "transformer_decoder(depth=1, heads=2)(x, ctx=c)"),
    "object_queries": (SEQ, "object_queries(n=5, width=16)(x)"),
    "mae_decoder": (SEQ, "mae_decoder(width=8, depth=1, heads=2, patch=8, size=16, "
                         "channels=2)(x)"),
    "classifier": (VEC, "classifier(classes=5, hidden=8)(x)"),
    "lm_head": (SEQ, "lm_head(vocab=20, transform=true)(x)"),
    "itm_head": (VEC, "itm_head()(x)"),
    "regression": (VEC, "regression(out=3)(x)"),
    "box_head": (SEQ, "box_head()(x)"),
    "l2norm": (VEC, "l2norm(x)"), "gelu": (VEC, "gelu(x)"), "relu": (VEC, "relu(x)"),
    "silu": (VEC, "silu(x)"), "tanh": (VEC, "tanh(x)"), "sigmoid": (VEC, "sigmoid(x)"),
    "softmax": (VEC, "softmax(x)"), "detach": (VEC, "x + detach(x)"),
    "dropout": (VEC, "dropout(x, p=0.5)"),
    "batch_concat": (VEC, "batch_concat(x, x)"),
    "hard_negatives": ("input x: Vec[B, 16]\n  input y: Vec[B, 16]",
                       "hard_negatives(x, y, y) + x"),
    "mask_tokens": (TOK, "token_embedding(vocab=200, width=16)(mask_tokens(t, vocab=32))"),
    "token_mask": (SEQ, "token_mask(x, keep=4)"),
    "contrastive": ("input x: Vec[B, 16]\n  input y: Vec[B, 16]", "contrastive(x, y, queue=8)"),
    "itm": ("input x: Vec[B, 16]", "itm(itm_head()(x), itm_head()(x))"),
    "next_token": ("input p: Seq[B, 3, 16]\n  " + TOK, "next_token(causal_lm(vocab=32, width=16, "
                   "depth=1, heads=2)(prefix=p, tokens=t), t, skip=3)"),
    "mlm": (SEQ + "\n  " + TOK, "mlm(lm_head(vocab=16)(x), t, mask_tokens(t).mask)"),
    "masked_reconstruction": ("input x: Seq[B, 4, 16]\n  input y: Image[B, 2, 16, 16]",
                              "masked_reconstruction(mae_decoder(width=8, depth=1, heads=2, "
                              "patch=8, size=16, channels=2)(x), y, token_mask(x, keep=2).mask, "
                              "patch=8)"),
    "cross_entropy": (VEC + "\n  input lab: Labels[B]",
                      "cross_entropy(classifier(classes=2)(x), lab)"),
    "kl_distill": (VEC, "kl_distill(classifier(classes=4)(x), classifier(classes=4)(x))"),
    "feature_distill": (VEC + "\n  input y: Vec[B, 8]", "feature_distill(linear(out=8)(x), y)"),
    "mse": (VEC, "mse(linear(out=8)(x), linear(out=8)(x))"),
    "moe_aux": (SEQ, "moe_aux(moe_ffn(experts=2, top_k=1)(x))"),
    "similarity": ("input x: Vec[B, 16]\n  input c: Vec[C, 16]",
                   "similarity(learnable=true)(x, c)"),
    "mask_features": (SEQ, "linear(out=4)(mask_features(x, prob=0.5))"),
    "token_contrastive": ("input x: Seq[B, 6, 16]\n  input c: Seq[B, 4, 16]\n"
                          "  input p: Tensor<bool>[B, 6, 4]",
                          "token_contrastive(linear(out=8)(x), linear(out=8)(c), p)"),
    "word_region_ot": (SEQ2, "word_region_ot(linear(out=8)(x), linear(out=8)(c), "
                             "iterations=5)"),
    "prototypes": (VEC, "prototypes(prototypes=5)(linear(out=8)(x), linear(out=8)(x))"),
    "set_loss": (SEQ + "\n  input lab: Labels[B, 3]\n  input tb: Boxes[B, 3, 4]",
                 "set_loss(classifier(classes=9)(x), box_head()(x), lab, tb)"),
    "ctc": (SEQ + "\n  input t: Tokens[B, 3]", "ctc(lm_head(vocab=9)(x), t, blank=8)"),
    "masked_regions": (SEQ + "\n  input m: Mask[B, 6]", "masked_regions(linear(out=16)(x), x, m)"),
    "tubelet_embed": ("input x: Video[B, 4, 3, 32, 32]",
                      "tubelet_embed(patch=16, tubelet=2, width=16)(x)"),
    "conv_frontend": ("input x: Audio[B, 400]",
                      "conv_frontend(channels=[8, 16], kernels=[10, 3], strides=[5, 2])(x)"),
    "pixel_shuffle": ("input x: Seq[B, 16, 8]", "pixel_shuffle(x, ratio=2)"),
    "frames_to_batch": ("input x: Video[B, 2, 3, 32, 32]",
                        "frames_to_batch(x)"),
    "batch_to_frames": (SEQ, "batch_to_frames(linear(out=8)(frames_to_batch(x, frames=2)), "
                             "frames=2)"),
    "locations_to_batch": (SEQ, "locations_to_batch(linear(out=8)(x), frames=2)"),
    "batch_to_locations": (SEQ, "batch_to_locations(linear(out=8)(locations_to_batch(x, "
                                "frames=2)), locations=3)"),
    "vec_to_seq": (VEC, "vec_to_seq(linear(out=8)(x))"),
    "local_cross_attention": ("input x: Seq[B, 16, 8]\n  input c: Tensor[B, 6, 2, 2]",
                              "local_cross_attention(grid=2, width=16, heads=2)(x, c)"),
    "gate": (VEC, 'gate(out=3, act="softmax")(x)'),
    "mixture": (VEC + "\n  input w: Tensor[B, 2]", "mixture(w, x, x)"),
    "modality_gate": (SEQ + "\n  input p: Tensor<bool>[B]", "modality_gate(x, p)"),
    "feature_queue": (VEC, "feature_queue(size=8)(x)"),
    "hf_backbone": ("input x: Image[B, 3, 32, 32]",
                    'hf_backbone(family="resnet", depths=[1, 1], widths=[8, 16], embedding=8, '
                    'stages=[1, 2], output="tokens")(x)'),
}

# parameters that rightly get no gradient in a case, and why
NO_GRAD = {"moe_aux": ("experts", "the balancing loss depends on the router alone")}


# components whose case needs files, tested in their own file
ELSEWHERE = {"hf_model": "a transformers folder: tests/test_hf_model_component.py",
             "timm_backbone": "needs timm (mmgraph[vision]): tests/test_backbones.py"}


def test_every_component_has_a_case():
    assert sorted(CASES) == [n for n in registry.names() if n not in ELSEWHERE]


def build(name):
    inputs, expr = CASES[name]
    # `comp(params)(inputs)` in the table reads like a declaration and a call: write it as
    # an inline call, keyword inputs and parameters together
    inline = _inline(expr)
    comp = registry.get(name)
    out = "loss l = " if comp.category == "loss" else "output "
    suffix = "" if comp.category == "loss" else " as y"
    src = f"model m {{\n  {inputs}\n  {out}{inline}{suffix}\n}}\n"
    path = f"/tmp/mmgraph_case_{name}.mmg"
    with open(path, "w") as f:
        f.write(src)
    return load(path), src


def _inline(expr: str) -> str:
    """`comp(p=1)(x, k=y)` -> `comp(x, k=y, p=1)` (recursively)."""
    out, i = "", 0
    while i < len(expr):
        j = expr.find(")(", i)
        if j < 0:
            return out + expr[i:]
        start = _open(expr, j)
        params = expr[start + 1:j]
        k = _close(expr, j + 1)
        args = _inline(expr[j + 2:k])
        head = expr[i:start]
        out += f"{head}({args}{', ' if args and params else ''}{params})"
        i = k + 1
    return out


def _open(s, j):
    depth = 0
    for i in range(j, -1, -1):
        depth += s[i] == ")"
        depth -= s[i] == "("
        if depth == 0:
            return i
    raise ValueError(s)


def _close(s, j):
    depth = 0
    for i in range(j, len(s)):
        depth += s[i] == "("
        depth -= s[i] == ")"
        if depth == 0:
            return i
    raise ValueError(s)


@pytest.mark.parametrize("name", sorted(CASES))
def test_component_shapes_dtypes_and_gradients(name):
    torch.manual_seed(0)
    model, src = build(name)
    g = model.graph
    dims = {"B": 3, "T": 5}
    x = example_inputs(g, dims, int_high=8)
    comp = registry.get(name)
    if comp.category == "loss":
        value = model.losses(**x)["l"]
        assert value.dim() == 0 and torch.isfinite(value), src
        if value.requires_grad:
            value.backward()
    else:
        model.train()
        out = model(**{k: v for k, v in x.items() if k in g.inputs})["y"]
        want = g.type_of(g.outputs["y"])
        assert tuple(out.shape) == concrete_shape(want, dims), src
        assert out.dtype == TORCH_DTYPES[want.dtype], src
        if out.requires_grad:
            out.float().pow(2).mean().backward()
    exempt = NO_GRAD.get(name, ("\0",))[0]
    for pname, p in model.named_parameters():
        if p.requires_grad and exempt not in pname:
            assert p.grad is not None, f"{pname} got no gradient\n{src}"


def test_faces_take_parameters_by_keyword_without_defaults():
    """Codegen passes every parameter, so a default in a face would be a second copy."""
    for name in registry.names():
        comp = registry.get(name)
        face = comp.torch_face()
        accepted = inspect.signature(face.__init__ if comp.has_weights else face).parameters
        for field in comp.Params.model_fields:
            if field in accepted:
                param = accepted[field]
                assert param.kind is param.KEYWORD_ONLY, f"{name}.{field}: {param.kind}"
                assert param.default is param.empty, f"{name}.{field} = {param.default!r}"


def test_generated_code_names_each_builtin_face_by_its_path():
    for name in registry.names():
        comp = registry.get(name)
        expr = face_expr(comp)
        assert expr.startswith("mm.") and "face(" not in expr, (name, expr)
        assert eval(expr, {"mm": mm}) is comp.torch_face(), (name, expr)


def test_frozen_modules_stay_in_eval_mode():
    path = "/tmp/mmgraph_frozen.mmg"
    with open(path, "w") as f:
        f.write(textwrap.dedent("""
            model m {
              input x: Seq[B, 4, 8]
              layer enc: transformer(depth=1, heads=2, dropout=0.5) frozen
              layer head: linear(out=2)
              output head(enc(x)) as y
            }"""))
    model = load(path)
    model.train()
    assert not model.enc.training and model.head.training
    assert all(not p.requires_grad for p in model.enc.parameters())


def test_lora_starts_as_the_base_layer_and_trains_only_adapters():
    path = "/tmp/mmgraph_lora.mmg"
    with open(path, "w") as f:
        f.write(textwrap.dedent("""
            model m {
              input x: Seq[B, 4, 8]
              layer enc: transformer_layer(heads=2) frozen lora(r=2, alpha=4, targets=["q", "v"])
              output enc(x) as y
            }"""))
    model = load(path)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["enc.block.attn.q.lora_a", "enc.block.attn.q.lora_b",
                         "enc.block.attn.v.lora_a", "enc.block.attn.v.lora_b"]
    x = torch.randn(2, 4, 8)
    base = model.enc.block.attn.q
    assert torch.equal(base(x), torch.nn.functional.linear(x, base.weight, base.bias))


@pytest.mark.parametrize("mode,expect", [("last", [2, 4]), ("cls", [0, 3])])
def test_pool_with_a_mask_takes_the_first_or_last_real_token(mode, expect):
    """Row 0 is right-padded (3 real tokens), row 1 left-padded (tokens 3 and 4 real): the
    pooled token is the one the unpadded example would give (the mask used to be ignored)."""
    from mmgraph.components.nn.connectors import Pool

    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    out = Pool(in_width=3, mode=mode, heads=1)(x, mask=mask)
    assert torch.equal(out, torch.stack([x[0, expect[0]], x[1, expect[1]]]))
