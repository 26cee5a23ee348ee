"""FSDP2 and activation checkpointing in one process (a process group of one): staged training
with a frozen part trains as without them, the frozen part has no optimizer state, and the
setting and the flag are refused or accepted where they should be. The two-process parity is
tests/test_distributed.py."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from mmgraph.backends.torch.weights import find
from mmgraph.train.distributed import blocks
from mmgraph.train.run import train

STAGED = """
model staged {
  input image: Image[B, 3, 16, 16]
  input text:  Tokens[B, 40]
  encoder vision: vit(patch=4, width=16, depth=2, heads=2, pool="cls")
  encoder texter: text_transformer(vocab=259, width=16, depth=1, heads=2, max_len=40,
                                   causal=true, pool="eot") frozen
  connector img_proj: linear(out=8)
  connector txt_proj: linear(out=8)
  img = l2norm(img_proj(vision(image)))
  txt = l2norm(txt_proj(texter(text)))
  output img, txt
  loss itc = contrastive(img, txt, learnable=true)
  train {
    batch_size = 16
    precision = fp32
    stage align { trainable = [img_proj, txt_proj, itc]; steps = 2; lr = 1e-2 }
    stage tune  { trainable = [vision, img_proj]; steps = 2; lr = 1e-3 }
  }
}
"""


def weights(run):
    return load_file(find(run) / "model.safetensors")


def assert_close(a, b, tol):
    assert a.keys() == b.keys()
    worst = {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert max(worst.values()) <= tol, {k: v for k, v in worst.items() if v > tol}


def test_fsdp_and_activation_checkpointing_train_stages_as_plain_training(tmp_path):
    """Two stages, the trainable set changing between them (FSDP shards once and changes
    requires_grad only), a frozen tower, a learnable 0-dim temperature (replicated)."""
    spec = tmp_path / "staged.mmg"
    spec.write_text(STAGED)
    plain = train(spec, out=tmp_path / "plain", quiet=True, device="cpu")
    sharded = train(spec, out=tmp_path / "fsdp", quiet=True, device="cpu", fsdp=True)
    checkpointed = train(spec, out=tmp_path / "ac", quiet=True, device="cpu",
                         settings_overrides={"activation_checkpointing": True})
    assert plain["processes"] == sharded["processes"] == 1
    assert [s["trainable_params"] for s in sharded["stages"]] == \
        [s["trainable_params"] for s in plain["stages"]]
    reference = weights(tmp_path / "plain")
    assert_close(weights(tmp_path / "ac"), reference, tol=0.0)  # recomputed, same numbers
    assert_close(weights(tmp_path / "fsdp"), reference, tol=1e-6)
    assert checkpointed["final_losses"] == plain["final_losses"]
    # the frozen text tower (and, in stage tune, what it leaves alone) has no optimizer state
    ckpt = find(tmp_path / "fsdp")
    assert (ckpt / "sharded").is_dir()
    state = json.loads((ckpt / "state.json").read_text())
    names = [n for group in state["optimizer"]["param_groups"] for n in group["params"]]
    assert names and all(n.startswith(("vision.", "img_proj.")) for n in names)


def test_blocks_are_the_children_of_module_lists_innermost_first():
    from mmgraph.build import load

    from conftest import ROOT
    from tiny import TINY

    model = load(ROOT / "specs" / "clip_moe.mmg", **TINY["clip_moe"])
    names = [name for name, _ in blocks(model)]
    assert names and all(name.rsplit(".", 1)[-1].isdigit() for name in names)
    assert not any(".experts." in name + "." for name in names)  # experts stay in their layer
    depth = [name.count(".") for name in names]
    assert depth == sorted(depth, reverse=True)


def test_auto_device_is_cuda_when_present_else_cpu():
    from mmgraph.train.run import check_device

    assert check_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
