"""Options of the attention layers and the LM head (issue 13): GPT-J's parallel residual block
against transformers' GPTJBlock, prefix-bidirectional causal masks (Croc) against a hand-built
boolean mask, explicit fractional rotary positions (V2PE) against a hand-computed rotation,
and an lm_head tied to a token_embedding (eP-ALM) whose one weight gets both gradients; their
diagnostics, and ONNX export with parity."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmgraph
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export

from helpers import check, docs_example, errors, graph


def _load(src: str):
    """A torch model from spec text (written to a temporary file, as `load` reads files)."""
    folder = Path(tempfile.mkdtemp())
    (folder / "m.mmg").write_text(src)
    return mmgraph.load(folder / "m.mmg")


def _spec(inputs: str, body: str, outputs: str = "y") -> str:
    return f"model m {{\n{inputs}\n{body}\n  output {outputs}\n}}\n"


# ---------------------------------------------------------------- parallel residual (GPT-J)

def test_parallel_block_matches_gptj_block_with_the_same_weights():
    pytest.importorskip("transformers")
    from transformers import GPTJConfig
    from transformers.models.gptj.modeling_gptj import GPTJBlock, GPTJRotaryEmbedding

    torch.manual_seed(0)
    width, heads, dim_head, n = 16, 2, 8, 7
    # rotary over the whole head: GPT-J's checkpoints rotate only rotary_dim=64 of 256
    # features per head, which mmgraph's rope does not do
    cfg = GPTJConfig(n_embd=width, n_head=heads, rotary_dim=dim_head, n_inner=32,
                     activation_function="gelu_new", n_positions=32, vocab_size=8,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "eager"
    ref = GPTJBlock(cfg, 0).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    model = _load(_spec("  input x: Seq[B, N, 16]",
                        "  layer blk: transformer_layer(heads=2, mlp=32, act=\"gelu_tanh\", "
                        "causal=true, pos=\"rope\", parallel=true)\n  y = blk(x)"))
    block = model.blk.block
    assert block.norm2 is None  # one shared norm, as GPT-J
    # GPT-J rotates interleaved pairs (2i, 2i+1), mmgraph the halves (i, i + Dh/2): the same
    # rotation once each head's q/k features are reordered, which leaves q.k unchanged
    order = torch.cat([torch.arange(0, dim_head, 2), torch.arange(1, dim_head, 2)])

    def halves(w):
        return w.view(heads, dim_head, width)[:, order].reshape(width, width)

    attn = block.attn
    with torch.no_grad():
        block.norm1.load_state_dict(ref.ln_1.state_dict())
        attn.q.weight.copy_(halves(ref.attn.q_proj.weight))
        attn.k.weight.copy_(halves(ref.attn.k_proj.weight))
        attn.v.weight.copy_(ref.attn.v_proj.weight)
        attn.o.weight.copy_(ref.attn.out_proj.weight)
        for lin in (attn.q, attn.k, attn.v, attn.o):  # GPT-J's attention has no biases
            lin.bias.zero_()
        block.ffn.fc1.load_state_dict(ref.mlp.fc_in.state_dict())
        block.ffn.fc2.load_state_dict(ref.mlp.fc_out.state_dict())
    x = torch.randn(2, n, width)
    positions = torch.arange(n)[None].expand(2, n)
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        want = ref(x, attention_mask=causal, position_ids=positions,
                   position_embeddings=GPTJRotaryEmbedding(cfg)(x, positions))
        got = model(x=x)["y"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- prefix masks (Croc)

def test_prefix_attention_matches_a_hand_built_mask():
    torch.manual_seed(0)
    model = _load(_spec("  input x: Seq[B, 7, 16]",
                        "  layer att: self_attention(heads=2, causal=true, prefix=3)\n"
                        "  y = att(x)"))
    x = torch.randn(2, 7, 16)
    a = model.att.attn
    q, k, v = (lin(x).view(2, 7, 2, 8).transpose(1, 2) for lin in (a.q, a.k, a.v))
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    allowed = (j <= i) | ((i < 3) & (j < 3))  # the 3 visual tokens see each other
    want = a.o(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
               .transpose(1, 2).reshape(2, 7, 16))
    with torch.no_grad():
        got = model(x=x)["y"]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        later = x.clone()
        later[:, 2] += 1  # position 0 sees the prefix's position 2 ...
        assert (model(x=later)["y"][:, 0] - got[:, 0]).abs().max() > 1e-3
        later = x.clone()
        later[:, 3:] += 1  # ... and nothing after the prefix
        torch.testing.assert_close(model(x=later)["y"][:, :3], got[:, :3], rtol=0, atol=0)


def test_prefix_in_a_transformer_stack_keeps_the_padding_mask():
    torch.manual_seed(0)
    model = _load(_spec("  input x: Seq[B, 6, 16]\n  input m: Mask[B, 6]",
                        "  layer t: transformer(depth=2, heads=2, causal=true, prefix=2, "
                        "pos=\"alibi\")\n  y = t(x, mask=m)"))
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        y = model(x=x, m=mask)["y"]
        z = model(x=x, m=mask.clone().fill_(True))["y"]
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0], z[0], rtol=0, atol=0)


# ---------------------------------------------------------------- explicit positions (V2PE)

def _rotate(t, positions, theta=10000.0):
    """Rotary embedding by hand: pair feature i with i + d/2 and turn the pair by the angle
    position * theta^(-2i/d)."""
    d = t.shape[-1]
    half = d // 2
    out = torch.empty_like(t)
    for i in range(half):
        angle = positions[:, None, :] * theta ** (-2 * i / d)  # [B, 1, N]
        a, b = t[..., i], t[..., i + half]
        out[..., i] = a * torch.cos(angle) - b * torch.sin(angle)
        out[..., i + half] = b * torch.cos(angle) + a * torch.sin(angle)
    return out


def v2pe_positions(visual: int, text: int, step: float, batch: int) -> torch.Tensor:
    """V2PE: visual tokens advance the position by `step` (< 1), text tokens by 1."""
    steps = torch.tensor([0.0] + [step] * (visual - 1) + [1.0] * text)
    return steps.cumsum(0)[None].expand(batch, -1).contiguous()


def test_fractional_rotary_positions_match_a_hand_computed_rotation():
    torch.manual_seed(0)
    model = _load(_spec("  input x: Seq[B, N, 16]\n  input p: Tensor[B, N]",
                        "  layer att: self_attention(heads=2, causal=true, pos=\"rope\")\n"
                        "  y = att(x, positions=p)"))
    x = torch.randn(2, 7, 16)
    positions = v2pe_positions(visual=4, text=3, step=0.25, batch=2)
    assert positions[0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.75, 2.75, 3.75]
    a = model.att.attn
    q, k, v = (lin(x).view(2, 7, 2, 8).transpose(1, 2) for lin in (a.q, a.k, a.v))
    q, k = _rotate(q, positions), _rotate(k, positions)
    want = a.o(F.scaled_dot_product_attention(q, k, v, is_causal=True)
               .transpose(1, 2).reshape(2, 7, 16))
    with torch.no_grad():
        got = model(x=x, p=positions)["y"]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        counted = torch.arange(7.0)[None].expand(2, 7)  # 0..N-1 given = nothing given
        plain = _load(_spec("  input x: Seq[B, N, 16]",
                            "  layer att: self_attention(heads=2, causal=true, pos=\"rope\")\n"
                            "  y = att(x)"))
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x=x, p=counted)["y"], plain(x=x)["y"],
                                   rtol=0, atol=1e-6)


# ---------------------------------------------------------------- lm_head tied to the embedding

# bidirectional (BERT ties its MLM head too): a model that generates also exports generation
# graphs, which are not what this file tests
TIED = """model m {
  input tokens: Tokens[B, T]
  layer embed: token_embedding(vocab=32, width=16)
  layer body: transformer_layer(heads=2)
  head out: lm_head(vocab=32, bias=true, tie="embed")
  h = body(embed(tokens))
  logits = out(h)
  output logits
  export {
    dim B = 1..3 @ 2
    dim T = 1..6 @ 4
    part trunk: tokens -> h
    part head: h -> logits
  }
}
"""


def test_a_tied_head_and_the_embedding_update_one_tensor():
    torch.manual_seed(0)
    model = _load(TIED)
    names = dict(model.named_parameters())
    assert "out.bias" in names and not any(n.startswith("out.decoder") for n in names)
    weight = model.embed.embed.weight
    tokens = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])
    logits = model(tokens=tokens)["logits"]
    torch.testing.assert_close(logits, F.linear(model.body(model.embed(tokens)), weight,
                                                model.out.bias), rtol=0, atol=0)
    targets_ = torch.randint(0, 32, (2, 4))
    F.cross_entropy(logits.flatten(0, 1), targets_.flatten()).backward()
    both = weight.grad.clone()
    # the same loss with each use given its own copy: the tied gradient is their sum
    as_input, as_output = weight.detach().clone().requires_grad_(), \
        weight.detach().clone().requires_grad_()
    h = model.body(F.embedding(tokens, as_input))
    F.cross_entropy(F.linear(h, as_output, model.out.bias).flatten(0, 1),
                    targets_.flatten()).backward()
    assert as_input.grad[10:].abs().sum() == 0  # tokens 10.. are not in the input ...
    assert as_output.grad[10:].abs().sum() > 0  # ... but the head scores them
    torch.testing.assert_close(both, as_input.grad + as_output.grad, rtol=0, atol=1e-6)
    before = weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert (weight - before)[10:].abs().sum() > 0  # one step moves the one shared tensor


def test_tie_diagnostics_name_the_parameter():
    def spec(head, embed="token_embedding(vocab=32, width=16)"):
        return f"""model m {{
  input tokens: Tokens[B, T]
  layer embed: {embed}
  layer proj: linear(out=16)
  head out: {head}
  logits = out(proj(embed(tokens)))
  output logits
}}"""
    assert errors(spec('lm_head(vocab=32, tie="embd")')) == [
        ("E203", 5, 35, 'out: tie="embd" names no layer declared here')]
    assert errors(spec('lm_head(vocab=32, tie="proj")')) == [
        ("E203", 5, 35, "out ties its weight to 'proj', a linear layer; tie takes a "
                        "token_embedding layer, whose weight is [vocab, width]")]
    assert errors(spec('lm_head(vocab=30, tie="embed")',
                       "token_embedding(vocab=32, width=8)")) == [
        ("E203", 5, 35, "out ties its weight to 'embed', but they differ: vocab=30 vs 32, "
                        "input width 16 vs width=8")]
    assert [d.hint for d in check(spec('lm_head(vocab=32, tie="embd")')).errors] == [
        "did you mean 'embed'?"]
    assert errors(spec('lm_head(vocab=32, tie="embed") lora(r=2)')) == [
        ("E206", 5, 3, "out ties its weight to 'embed' and has no linear weight of its own "
                       "to adapt")]


def test_attention_option_diagnostics():
    seq = "  input x: Seq[B, 6, 16]\n  input p: Tensor[B, 6]\n  input q: Tensor[B, 5]"
    assert errors(_spec(seq, "  layer a: self_attention(heads=2, prefix=2)\n  y = a(x)")) == [
        ("E203", 5, 43, "a: prefix=2 makes the first positions attend to each other in "
                        "causal attention, but causal=false already attends everywhere")]
    assert errors(_spec(seq, "  layer a: self_attention(heads=2, causal=true, prefix=9)\n"
                             "  y = a(x)")) == [
        ("E203", 5, 56, "a: prefix=9 is longer than the 6 positions of x")]
    assert errors(_spec(seq, "  layer a: self_attention(heads=2)\n  y = a(x, positions=p)")) \
        == [("E205", 6, 22, 'a is given positions but has pos="none", which reads none')]
    assert errors(_spec(seq, "  layer a: self_attention(heads=2, pos=\"rope\")\n"
                             "  y = a(x, positions=q)")) == [
        ("E301", 6, 22, "a needs the same number of positions from x and q, but they give "
                        "6 and 5")]
    assert errors(_spec(seq, "  layer a: self_attention(heads=2, pos=\"rope\")\n"
                             "  y = a(x, positions=x)")) == [
        ("E302", 6, 22, "a expects Tensor[B, N] positions (one number per position, "
                        "fractions allowed) for 'positions' but x gives Seq[B, 6, 16]")]
    assert errors(_spec(seq, "  layer a: transformer_layer(heads=2, parallel=true, "
                             "post_norm=true)\n  y = a(x)")) == [
        ("E203", 5, 48, "a: parallel=true is GPT-J's pre-norm block without "
                        "cross-attention, so it cannot be post_norm=true")]


def test_a_prefix_layer_does_not_generate_and_says_why():
    g = graph("""model m {
  input t: Tokens[B, T]
  layer emb: token_embedding(vocab=10, width=8)
  layer lm: transformer_layer(heads=2, causal=true, prefix=2)
  head out: lm_head(vocab=10, tie="emb")
  logits = out(lm(emb(t)))
  output logits
}""")
    assert g.decoding is None
    assert "layer 'lm' (transformer_layer) has prefix=2: its first positions attend to later " \
        "ones" in g.decoding_problem.message


OPTIONS = """model m {
  input x: Seq[B, N, 16]
  input p: Tensor[B, N]
  layer gptj: transformer_layer(heads=2, causal=true, pos="rope", parallel=true)
  layer croc: transformer(depth=1, heads=2, causal=true, prefix=2)
  layer v2pe: self_attention(heads=2, causal=true, pos="rope")
  y = v2pe(croc(gptj(x)), positions=p)
  output y
  export {
    dim B = 1..3 @ 2
    dim N = 2..7 @ 4
  }
}
"""


@pytest.mark.parametrize("spec", [OPTIONS, TIED], ids=["attention_options", "tied_head"])
def test_attention_options_and_a_tied_head_export_with_parity(spec, tmp_path):
    path = tmp_path / "m.mmg"
    path.write_text(spec)
    manifest = export(path, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    assert len(manifest["parts"]) == (2 if spec is TIED else 1)
    for part in manifest["parts"]:
        for output, err in part["parity"]["fp32"].items():
            assert set(err["at"]) == {"min", "opt", "max"}, output
            assert err["max_abs"] <= 1e-4, (part["name"], output, err)
    assert not math.isnan(manifest["parts"][-1]["parity"]["fp32"][
        "logits" if spec is TIED else "y"]["max_abs"])


def test_the_catalogue_example_checks_runs_and_ties(tmp_path):
    """docs/language.md's example of these layers: a hybrid mamba/attention stack with V2PE
    positions and a prefix over the visual tokens, a tied head, a GRU's last state."""
    path = tmp_path / "example.mmg"
    path.write_text(docs_example("block hybrid(heads) {")[0])
    torch.manual_seed(0)
    model = mmgraph.load(path)
    out = model(image=torch.randn(2, 4, 64), text=torch.randint(0, 100, (2, 3)),
                positions=v2pe_positions(visual=4, text=3, step=0.25, batch=2),
                frames=torch.randn(2, 9, 32))
    assert tuple(out["logits"].shape) == (2, 3, 100) and tuple(out["clip"].shape) == (2, 32)
    assert not any(n.startswith("out.decoder") for n, _ in model.named_parameters())
    assert model.graph.decoding is None  # mamba keeps a state the cache has no place for
