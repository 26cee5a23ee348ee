"""Generation in torch: the decoding plan, the KV cache against recomputation, batching with
left padding, the sampling rules, and the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmgraph.build import instantiate, load_class
from mmgraph.cli import main
from mmgraph.compiler import check_file
from mmgraph.components.nn.cache import KVCache, decoding
from mmgraph.errors import InputError
from mmgraph.sampling import Sampling, choose

from helpers import graph
from tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
GENERATORS = ["llava", "blip2", "flamingo", "llamafusion"]


def tiny_model(name: str, seed: int = 0, **extra):
    cls, g = load_class(ROOT / "specs" / f"{name}.mmg", None, **{**TINY[name], **extra})
    torch.manual_seed(seed)
    return instantiate(cls, g, pretrained=False).eval(), g


def context_of(model, g, batch: int = 1, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(batch, *[int(d) for d in g.nodes[n].type.dims[1:]], generator=gen)
            for n in model.decoding["context"]}


# ---------------------------------------------------------------- the plan


def test_plan_of_llava_reads_the_projected_visual_tokens_once():
    plan = check_file(ROOT / "specs" / "llava.mmg", TINY["llava"]).graphs["llava"].decoding
    assert (plan.tokens, plan.logits, plan.vocab) == ("prompt", "logits", 64)
    assert plan.context_inputs == ("image",)
    assert plan.frontier == (("v", "out"),)
    assert plan.step_nodes == ("prompt", "logits")
    assert plan.max_len == 4096


def test_plan_of_flamingo_steps_through_every_gated_group():
    plan = check_file(ROOT / "specs" / "flamingo.mmg", TINY["flamingo"]).graphs["flamingo"]\
        .decoding
    assert plan.frontier == (("media", "out"),)
    assert "lm.1.lm_layers.0" in plan.step_nodes and "vision" not in plan.step_nodes


@pytest.mark.parametrize("spec, line, col, words", [
    # Zipper's speech tower cross-attends to the text: every text token sees later ones
    ("zipper", 44, 36, "layer 'towers.0.speech_from_text' (gated_cross_attention) reads 'ctx' "
                       "from a value that depends on text"),
    ("clip", 25, 1, "model clip has no output Logits[B, N, V]"),
])
def test_models_that_cannot_generate_say_where(spec, line, col, words, capsys):
    assert main(["generate", str(ROOT / "specs" / f"{spec}.mmg")]) == 1
    err = capsys.readouterr().err
    assert f"{spec}.mmg:{line}:{col}: error[E701]: cannot generate: " in err
    assert words in err
    assert "^" in err and "Traceback" not in err


def test_a_context_joined_after_the_tokens_is_refused():
    g = graph("""
        model m {
          input t: Tokens[B, T]
          input v: Seq[B, 4, 8]
          layer emb: token_embedding(vocab=10, width=8)
          layer lm: transformer_layer(heads=2, causal=true)
          head out: lm_head(vocab=10)
          logits = out(lm(concat(emb(t), v)))
          output logits
        }
    """)
    assert "layer 'concat' (concat) puts a value that does not depend on t after the " \
           "tokens' positions" in g.decoding_problem.message
    assert (g.decoding_problem.span.line, g.decoding_problem.span.col) == (8, 19)


def test_llamafusion_joins_the_picture_once_and_slices_by_position():
    plan = check_file(ROOT / "specs" / "llamafusion.mmg", TINY["llamafusion"])\
        .graphs["llamafusion"].decoding
    assert plan.joins == (("concat", 1),)  # the latents' tokens come first
    assert plan.slices == (("slice", 16),)  # h[image_tokens:] with 16 picture positions


def test_a_bidirectional_layer_is_named_with_its_reason():
    g = graph("""
        model m {
          input t: Tokens[B, T]
          layer emb: token_embedding(vocab=10, width=8)
          layer enc: transformer_layer(heads=2)
          head out: lm_head(vocab=10)
          logits = out(enc(emb(t)))
          output logits
        }
    """)
    assert g.decoding is None
    assert "layer 'enc' (transformer_layer) has causal=false" in g.decoding_problem.message
    assert (g.decoding_problem.span.line, g.decoding_problem.span.col) == (7, 16)  # enc(...)


# ---------------------------------------------------------------- cache against recomputation


@pytest.mark.parametrize("name", GENERATORS)
def test_cached_steps_give_the_logits_of_the_whole_sequence(name):
    """Prefill 5 tokens, then 6 one-token steps: each step's logits equal the logits of a
    full forward pass at that position (1e-4), and greedy tokens agree with recomputation."""
    model, g = tiny_model(name)
    ctx = context_of(model, g)
    tokens = torch.randint(0, 64, (1, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(**ctx, **{model.decoding["tokens"]: tokens})[model.decoding["logits"]]
        values = model.generation_context(**ctx)
        cache = KVCache(torch.ones(1, 5, dtype=torch.bool))
        with decoding(cache):
            steps = [model.generation_step(*values, tokens[:, :5])]
        for i in range(5, 11):
            cache.extend_tokens(torch.ones(1, 1))
            with decoding(cache):
                steps.append(model.generation_step(*values, tokens[:, i:i + 1]))
    incremental = torch.cat(steps, dim=1)
    assert incremental.shape == full.shape
    assert (incremental - full).abs().max().item() < 1e-4
    cached = model.generate([[3, 1, 4, 1, 5]], max_new_tokens=12, **ctx)
    recomputed = model.generate([[3, 1, 4, 1, 5]], max_new_tokens=12, cache=False, **ctx)
    assert cached == recomputed and len(cached[0]) == 12


@pytest.mark.parametrize("name", GENERATORS)
def test_prompts_of_different_lengths_get_their_own_tokens(name):
    model, g = tiny_model(name)
    ctx = context_of(model, g, batch=2)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    together = model.generate(prompts, max_new_tokens=8, **ctx)
    alone = [model.generate([p], max_new_tokens=8, **{k: v[i:i + 1] for k, v in ctx.items()})[0]
             for i, p in enumerate(prompts)]
    assert together == alone


def test_one_image_serves_every_prompt():
    model, g = tiny_model("llava")
    ctx = context_of(model, g, batch=1)
    both = model.generate([[1, 2], [3, 4, 5]], max_new_tokens=4, **ctx)
    assert both[1] == model.generate([[3, 4, 5]], max_new_tokens=4, **ctx)[0]


def test_learned_positions_continue_from_the_cache():
    """BLIP-2's OPT decoder adds learned positions (offset 2): a cached step must use the
    position it is at, not position 0 (the plain-forward and cached logits agree above; here a
    prompt whose answer depends on position catches an offset error)."""
    model, g = tiny_model("blip2", seed=3)
    ctx = context_of(model, g)
    assert model.generate([[1] * 7], max_new_tokens=6, **ctx) == \
        model.generate([[1] * 7], max_new_tokens=6, cache=False, **ctx)


def test_a_stop_token_ends_its_row_and_is_kept():
    model, g = tiny_model("llava")
    ctx = context_of(model, g)
    free = model.generate([[1, 2, 3]], max_new_tokens=10, **ctx)[0]
    stop = free[3]
    cut = model.generate([[1, 2, 3]], max_new_tokens=10, stop=(stop,), **ctx)[0]
    assert cut == free[:free.index(stop) + 1]


def test_tokens_stream_as_they_come():
    model, g = tiny_model("llava")
    seen: list[tuple[int, int]] = []
    out = model.generate([[1, 2]], max_new_tokens=5, on_token=lambda r, t: seen.append((r, t)),
                         **context_of(model, g))
    assert seen == [(0, t) for t in out[0]]


# ---------------------------------------------------------------- sampling


def test_sampling_is_reproducible_from_its_seed_and_differs_between_seeds():
    model, g = tiny_model("llava")
    ctx = context_of(model, g)
    kw = dict(max_new_tokens=16, temperature=1.5, **ctx)
    a = model.generate([[1, 2, 3]], seed=7, **kw)
    assert a == model.generate([[1, 2, 3]], seed=7, **kw)
    assert a != model.generate([[1, 2, 3]], seed=8, **kw)


def test_top_k_one_is_greedy():
    logits = np.random.default_rng(0).normal(size=(3, 50))
    rng = np.random.default_rng(0)
    got = choose(logits, [[]] * 3, Sampling(temperature=2.0, top_k=1), rng)
    assert got.tolist() == logits.argmax(-1).tolist()


def test_top_p_keeps_the_smallest_set_holding_p():
    # probabilities 0.5, 0.3, 0.2: top_p=0.6 keeps the first two, never the third
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    rng = np.random.default_rng(0)
    picks = {int(choose(logits, [[]], Sampling(temperature=1.0, top_p=0.6), rng)[0])
             for _ in range(200)}
    assert picks == {0, 1}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([[2.0, -1.0, 1.9]])
    # token 0 was seen: 2.0 / 2 = 1.0 < 1.9, so token 2 wins
    assert choose(logits, [[0]], Sampling(repetition_penalty=2.0), None).tolist() == [2]
    logits = np.array([[-0.5, -1.0, -0.9]])
    # token 0 seen: -0.5 * 2 = -1.0, so token 2 (-0.9) wins
    assert choose(logits, [[0]], Sampling(repetition_penalty=2.0), None).tolist() == [2]


# ---------------------------------------------------------------- mistakes


def test_a_prompt_past_max_len_is_refused_naming_the_input():
    model, g = tiny_model("llava")
    with pytest.raises(InputError, match=r"input 'prompt' \(llava.mmg:29\): 3 prompt tokens "
                                         r"\(with what comes before them, 7 positions\) and "
                                         r"max_new_tokens=5000 need 5006 positions, over the "
                                         r"model's max_len 4096"):
        model.generate([[1, 2, 3]], max_new_tokens=5000, **context_of(model, g))


def test_an_image_of_the_wrong_size_is_refused_naming_the_input():
    model, _ = tiny_model("llava")
    with pytest.raises(InputError, match=r"input 'image' \(llava.mmg:28\) expects "
                                         r"Image<image>\[B, 3, 28, 28\], got shape "
                                         r"\[1, 3, 32, 32\]: axis 2 must be 28"):
        model.generate([[1]], image=torch.randn(1, 3, 32, 32))


def test_missing_context_and_bad_ids_are_refused():
    model, g = tiny_model("llava")
    ctx = context_of(model, g)
    with pytest.raises(InputError, match=r"generating needs input 'image' \(llava.mmg:28\)"):
        model.generate([[1]])
    with pytest.raises(InputError, match=r"input 'prompt' \(llava.mmg:29\): token id 64 at "
                                         r"\[0, 1\] is outside the vocabulary 0..63"):
        model.generate([[1, 64]], **ctx)
    with pytest.raises(InputError, match=r"stop tokens: token id 99 .* outside the vocabulary"):
        model.generate([[1]], stop=(99,), **ctx)
    with pytest.raises(InputError, match="every prompt needs at least one token"):
        model.generate([[]], **ctx)
    with pytest.raises(InputError, match="has 3 rows for 2 prompts"):
        model.generate([[1], [2]], image=ctx["image"].expand(3, -1, -1, -1))


def test_a_model_that_cannot_generate_says_why():
    model, _ = tiny_model("clip")
    with pytest.raises(InputError, match=r"Clip cannot generate: model clip has no output "
                                         r"Logits\[B, N, V\].*\(clip.mmg:25\)"):
        model.generate([[1]])


# ---------------------------------------------------------------- the command


LLAVA_BYTES = {**TINY["llava"], "vocab": 259}  # the byte tokenizer's ids


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("llava") / "run"
    sets = [a for k, v in LLAVA_BYTES.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", str(ROOT / "specs" / "llava.mmg"), *sets, "--max-steps", "1",
                 "--dims", "T=16", "--out", str(run), "--quiet"]) == 0
    return run, sets


def test_generate_command_prints_what_the_api_generates(llava_run, tmp_path, capsys):
    import json

    from PIL import Image

    from mmgraph.train.run import load_trained

    run, sets = llava_run
    picture = tmp_path / "p.png"
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 255).astype(np.uint8)).save(picture)
    capsys.readouterr()
    assert main(["generate", str(ROOT / "specs" / "llava.mmg"), *sets, "--checkpoint",
                 str(run), "--image", str(picture), "--prompt", "a", "--prompt", "the digit",
                 "--max-new-tokens", "6", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["generated"]
    model, g, _ = load_trained(ROOT / "specs" / "llava.mmg", run, LLAVA_BYTES)
    from mmgraph.generation import context_values
    image = context_values({"image": g.nodes["image"].type}, {"image": [str(picture)]}, {})
    # byte ids of the prompts after BOS (257), as the command tokenizes them
    want = model.generate([[257, 98], [257, *[b + 1 for b in b"the digit"]]],
                          max_new_tokens=6, stop=(258,), **image)
    assert [p["ids"] for p in printed] == want
    assert [p["prompt"] for p in printed] == ["a", "the digit"]


def test_generate_command_words_bad_settings(llava_run, tmp_path, capsys):
    run, sets = llava_run
    spec = str(ROOT / "specs" / "llava.mmg")
    assert main(["generate", spec, *sets, "--checkpoint", str(run), "--top-p", "2"]) == 2
    assert "--top-p: input should be less than or equal to 1 (got 2.0)" in \
        capsys.readouterr().err
    assert main(["generate", spec, *sets, "--checkpoint", str(run), "--image",
                 str(ROOT / "README.md")]) == 1
    assert "input 'image': cannot read" in capsys.readouterr().err
    assert main(["generate", spec, *sets, "--checkpoint", str(run)]) == 1
    assert "generating needs --image PATH for input 'image'" in capsys.readouterr().err
    from PIL import Image

    picture = tmp_path / "p.png"
    Image.new("L", (8, 8)).save(picture)
    assert main(["generate", spec, *sets, "--checkpoint", str(run), "--image", str(picture),
                 "--stop", "xyz"]) == 1
    assert "stop token 'xyz' is 3 tokens for tokenizer byte, not one" in \
        capsys.readouterr().err


def test_a_captioning_transformer_decoder_caches_self_and_cross_attention(tmp_path):
    """token embedding with learned positions -> causal transformer_decoder cross-attending
    to image features -> lm_head: the cached steps give the full pass's logits."""
    spec = tmp_path / "cap.mmg"
    spec.write_text("""
model cap {
  input image: Image[B, 3, 16, 16]
  input text: Tokens[B, T]
  encoder vision: vit(patch=8, width=16, depth=1, heads=2)
  layer embed: token_embedding(vocab=20, width=16, pos="learned", max_len=32)
  decoder dec: transformer_decoder(depth=2, heads=2, causal=true)
  head out: lm_head(vocab=20)
  logits = out(dec(embed(text), vision(image)))
  output logits
}
""")
    cls, g = load_class(spec, None)
    assert g.decoding.frontier == (("vision", "out"),)
    torch.manual_seed(0)
    model = instantiate(cls, g, pretrained=False).eval()
    image = torch.randn(1, 3, 16, 16)
    tokens = torch.randint(0, 20, (1, 7))
    with torch.no_grad():
        full = model(image=image, text=tokens)["logits"]
        values = model.generation_context(image)
        cache = KVCache(torch.ones(1, 3, dtype=torch.bool))
        with decoding(cache):
            steps = [model.generation_step(*values, tokens[:, :3])]
        for i in range(3, 7):
            cache.extend_tokens(torch.ones(1, 1))
            with decoding(cache):
                steps.append(model.generation_step(*values, tokens[:, i:i + 1]))
    assert len(cache.cross_kv) == 2  # the image's keys/values, projected once per layer
    assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-5


def test_a_per_position_value_from_outside_the_tokens_is_refused():
    """A Tensor[B, T] gate given by the caller weighs each position: a one-token step
    cannot take its slice, so the model cannot generate."""
    g = graph("""
        model m {
          input t: Tokens[B, T]
          input gate: Tensor[B, T]
          layer emb: token_embedding(vocab=10, width=8)
          layer lm: transformer_layer(heads=2, causal=true)
          head out: lm_head(vocab=10)
          logits = out(lm(emb(t)) * gate)
          output logits
        }
    """)
    assert g.decoding is None
    assert "this mul combines the generated tokens' sequence with a sequence that does not " \
           "depend on t position by position" in g.decoding_problem.message


def test_attention_given_explicit_positions_cannot_generate_and_says_so():
    g = graph("""
        model m {
          input t: Tokens[B, T]
          input p: Tensor[B, T]
          layer emb: token_embedding(vocab=10, width=8)
          layer lm: transformer_layer(heads=2, causal=true, pos="rope")
          head out: lm_head(vocab=10)
          logits = out(lm(emb(t), positions=p))
          output logits
        }
    """)
    assert "layer 'lm' (transformer_layer) takes explicit positions, which a KV-cached " \
           "generation step cannot take yet" in g.decoding_problem.message
