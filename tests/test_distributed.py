"""Two processes (gloo, CPU) train as one process on the same global batch: equal losses and
equal gradients (within 1e-5) for CLIP's contrastive loss and ALBEF's ITC + ITM (+ MLM), under
DDP and under FSDP2 (`--fsdp`); a sharded checkpoint resumes exactly and converts to one
safetensors file.

The two processes are started once for the module (this file run as a script, with the
environment torchrun would give it); they run every scenario in one process group and write
what they computed to a folder the tests compare with one process computing the same here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import TINY  # noqa: E402

CLIP = ROOT / "specs" / "clip.mmg"
ALBEF = ROOT / "specs" / "albef.mmg"
DIGITS = ROOT / "examples" / "clip_digits.mmg"
# ALBEF's momentum distillation scores each process's rows against its own batch (as the
# reference does), so the parity holds with the soft targets weighted out (alpha=0)
ALBEF_SETS = {**TINY["albef"], "alpha": 0}
LOCAL = ("loss/itc_i2t_md", "loss/itc_t2i_md")
GLOBAL_BATCH = 8
PROCESSES = 2
# one SGD step of lr 1 leaves w - grad: equal weights after it are equal gradients
SGD = {"optimizer": "sgd", "momentum": 0.0, "lr": 1.0, "warmup": 0, "schedule": "constant",
       "batch_size": 16, "weight_decay": 0.0, "precision": "fp32"}
ADAMW = {"optimizer": "adamw", "lr": 1e-3, "warmup": 0, "schedule": "constant",
         "batch_size": 16, "precision": "fp32"}
TOL = 1e-5


# ------------------------------------------------------------------ the computations
def module_step(spec: Path, overrides: dict, rank: int = 0, size: int = 1) -> dict:
    """Losses and gradients of one forward/backward of a tiny model on a fixed global batch,
    on this process's slice; gradients and losses averaged over processes as DDP does."""
    from mmgraph.build import load

    torch.manual_seed(0)
    model = load(spec, **overrides).train()
    torch.manual_seed(1)
    size_px, context = overrides["image_size"], overrides.get("context", 6)
    image = torch.randn(GLOBAL_BATCH, 3, size_px, size_px)
    text = torch.randint(1, overrides["vocab"], (GLOBAL_BATCH, context))
    per = GLOBAL_BATCH // size
    part = slice(rank * per, (rank + 1) * per)
    torch.manual_seed(2)
    _, losses = model(image=image[part], text=text[part], return_losses=True)
    losses["total"].backward()
    out = {f"loss/{k}": v.detach().reshape(1) for k, v in losses.items()}
    out.update({f"grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    out.update({f"buffer/{n}": b for n, b in model.named_buffers() if "queue" in n})
    if size > 1:
        for key, value in out.items():
            if not key.startswith("buffer/"):
                torch.distributed.all_reduce(value)
                value.div_(size)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def train_run(out: Path, settings: dict, max_steps: int, **kwargs) -> dict:
    from mmgraph.train.run import train

    return train(DIGITS, out=out, settings_overrides=settings, max_steps=max_steps,
                 quiet=True, device="cpu", **kwargs)


def worker(out: Path) -> None:
    """One of the two processes: every scenario, in one process group."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    results = {"clip": module_step(CLIP, TINY["clip"], rank, size),
               "albef": module_step(ALBEF, ALBEF_SETS, rank, size)}
    if rank == 0:
        for name, tensors in results.items():
            save_file(tensors, out / f"{name}.safetensors")
    train_run(out / "ddp", SGD, 1)
    train_run(out / "fsdp", SGD, 1, fsdp=True)
    train_run(out / "fsdp_straight", {**ADAMW, "ckpt_every": 2}, 4, fsdp=True)
    train_run(out / "fsdp_resumed", {**ADAMW, "ckpt_every": 2}, 3, fsdp=True)  # "killed" at 3
    train_run(out / "fsdp_resumed", {**ADAMW, "ckpt_every": 2}, 4, fsdp=True, resume=True)
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------ launching
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_processes")
    port = free_port()
    procs = []
    for rank in range(PROCESSES):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(PROCESSES), "LOCAL_WORLD_SIZE": str(PROCESSES),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT)}
        log = open(out / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, __file__, str(out)], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    try:
        for proc, _ in procs:
            proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pass
    failed = []
    for rank, (proc, log) in enumerate(procs):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode != 0:
            failed.append(f"rank {rank} exit {proc.returncode}:\n"
                          f"{(out / f'rank{rank}.log').read_text()[-3000:]}")
    assert not failed, "\n".join(failed)
    return out


def assert_close(got: dict, want: dict, tol: float = TOL) -> None:
    assert sorted(got) == sorted(want)
    worst = {k: float((got[k].float() - want[k].float()).abs().max()) for k in want}
    bad = {k: v for k, v in worst.items() if v > tol}
    assert not bad, f"differ by more than {tol}: {bad}"


def first_loss(run: Path) -> dict:
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return {k: v for k, v in record.items() if k.startswith("loss/")}


def final_weights(run: Path) -> dict:
    from mmgraph.backends.torch.weights import find

    return load_file(find(run) / "model.safetensors")


# ------------------------------------------------------------------ the tests
def test_clip_contrastive_loss_and_gradients_match_one_process(two):
    got, want = load_file(two / "clip.safetensors"), module_step(CLIP, TINY["clip"])
    assert float(want["loss/itc"]) > 0
    assert_close(got, want)


def test_albef_itc_itm_losses_gradients_and_queue_match_one_process(two):
    """Hard negatives sampled from the global batch, the queue filled with it, the MLM mask
    drawn for it: every loss, every gradient and the queues as one process has them."""
    got, want = load_file(two / "albef.safetensors"), module_step(ALBEF, ALBEF_SETS)
    assert {"loss/itc", "loss/itm", "loss/mlm", "buffer/itc.queue_a"} <= set(want)
    assert_close({k: v for k, v in got.items() if k not in LOCAL},
                 {k: v for k, v in want.items() if k not in LOCAL})


@pytest.mark.parametrize("run", ["ddp", "fsdp"])
def test_mmgraph_train_first_step_matches_one_process(two, tmp_path, run):
    """`mmgraph train` (DDP, and FSDP2 with --fsdp) on two processes: the first step's loss
    and the weights after one SGD step of lr 1 (so the gradients) equal one process's."""
    one = tmp_path / "one"
    train_run(one, SGD, 1)
    a, b = first_loss(two / run), first_loss(one)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < TOL for k in a), (a, b)
    assert_close(final_weights(two / run), final_weights(one))


def test_fsdp_checkpoint_resumes_exactly(two):
    """Killed after step 3 (checkpoint at step 2 sharded, step 3 the stage's end), resumed to
    step 4: the same weights, bit for bit, as four steps without a stop (AdamW state too)."""
    straight, resumed = final_weights(two / "fsdp_straight"), final_weights(two / "fsdp_resumed")
    assert_close(resumed, straight, tol=0.0)
    steps = [json.loads(line)["global_step"]
             for line in (two / "fsdp_resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_sharded_checkpoint_converts_to_one_safetensors_file(two, tmp_path):
    """`mmgraph convert-checkpoint` on a mid-run sharded checkpoint gives one model.safetensors
    that eval and export read; on a stage's end it gives exactly the file the run gathered
    itself. (That the weights are one process's is the SGD parity above: AdamW's first steps
    divide by |gradient| and so amplify float noise where the gradient is zero.)"""
    from mmgraph.backends.torch.weights import CheckpointError
    from mmgraph.cli import main
    from mmgraph.train.run import load_trained

    ckpts = two / "fsdp_straight" / "checkpoints"
    step2 = ckpts / "step-00000002"
    assert (step2 / "sharded").is_dir() and not (step2 / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match=r"is a sharded \(--fsdp\) checkpoint; gather "
                                              r"it into one file with `mmgraph "
                                              r"convert-checkpoint .*step-00000002`"):
        load_trained(DIGITS, step2)
    assert main(["convert-checkpoint", str(step2)]) == 0
    _, _, path = load_trained(DIGITS, step2)
    assert path == step2
    # the resumed run went through the same step 2: the same weights, bit for bit
    other = two / "fsdp_resumed" / "checkpoints" / "step-00000002"
    assert main(["convert-checkpoint", str(other)]) == 0
    assert_close(load_file(step2 / "model.safetensors"),
                 load_file(other / "model.safetensors"), tol=0.0)

    end = tmp_path / "step-00000004"
    shutil.copytree(ckpts / "step-00000004", end)
    (end / "model.safetensors").unlink()
    state = json.loads((end / "state.json").read_text())
    del state["files"]["model.safetensors"]
    (end / "state.json").write_text(json.dumps(state))
    assert main(["convert-checkpoint", str(end)]) == 0
    assert_close(load_file(end / "model.safetensors"),
                 load_file(ckpts / "step-00000004" / "model.safetensors"), tol=0.0)


def test_a_sharded_checkpoint_resumed_without_fsdp_is_refused(two, tmp_path):
    from mmgraph.backends.torch.weights import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(two / "fsdp_resumed", run)
    with pytest.raises(CheckpointError, match="written by `mmgraph train --fsdp`"):
        train_run(run, {**ADAMW, "ckpt_every": 2}, 5, resume=True)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
