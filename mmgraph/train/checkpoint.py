"""Writing checkpoints that lose nothing, and restoring a run's training state from one.

A checkpoint is a directory `step-00000123/` holding
- `model.safetensors`: the weights (tied weights once);
- `optimizer.safetensors` + the optimizer's scalar state in `state.json`;
- `state.json`: where training is (stage, step, epoch, batch), the scheduler, the RNG state,
  the settings, and the spec's fingerprint (hash, layers, parameter shapes).
It is written to `step-00000123.tmp/` and renamed into place, then `latest` (a one-line file)
is replaced atomically, so a run killed at any instant leaves the previous checkpoint intact;
older checkpoints are deleted only after that. `state.json` records the sha256 of every
tensor file. Finding a checkpoint and loading it verified (checksums, fingerprint, finite
weights) is `mmgraph.backends.torch.weights`, which export and bench use too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from mmgraph.backends.torch.pretrained import sources as pretrained_sources
from mmgraph.backends.torch.weights import (
    FORMAT,
    CheckpointError,
    checkpoints,
    fingerprint,
    read_state,
    read_tensors,
    unique_state,
)
from mmgraph.errors import describe_os_error
from mmgraph.ir.graph import Graph


@dataclass
class Position:
    """Where training is: exactly enough to continue as if never stopped."""

    stage: int = 0  # index into the stages being run
    step: int = 0  # optimizer steps done in this stage
    epoch: int = 0
    batch: int = 0  # batches of this epoch already consumed
    global_step: int = 0


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars["state"].setdefault(str(idx), {})[key] = value
    return tensors, scalars


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, scalars: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in scalars.get("state", {}).items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save(directory: str | Path, model: torch.nn.Module, optimizer, scheduler,
         position: Position, g: Graph, settings: dict, keep: int = 3,
         extra: dict | None = None) -> Path:
    """Write a checkpoint atomically, point `latest` at it, then keep only the newest `keep`.

    A write that fails (disk full, permission) removes the half-written folder and raises a
    CheckpointError naming the file; the previous checkpoints and `latest` are untouched.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{position.global_step:08d}"
    final, tmp = root / name, root / f"{name}.tmp"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        weights = unique_state(model)
        opt_tensors, opt_scalars = _optimizer_state(optimizer)
        blobs = {"model.safetensors": save_bytes(weights),
                 "optimizer.safetensors": save_bytes(opt_tensors or {"_empty": torch.zeros(0)}),
                 "rng.safetensors": save_bytes({"torch": torch.get_rng_state()})}
        for file, data in blobs.items():
            _write(tmp / file, data)
        state = {
            "format": FORMAT,
            "position": vars(position),
            "optimizer": opt_scalars,
            "scheduler": {k: v for k, v in scheduler.state_dict().items()
                          if isinstance(v, (int, float, list)) and k != "lr_lambdas"},
            "settings": settings,
            "fingerprint": fingerprint(g),
            "pretrained": pretrained_sources(g),  # folders and sha256 of their weight files
            "shapes": {k: list(v.shape) for k, v in weights.items()},
            "files": {file: hashlib.sha256(data).hexdigest() for file, data in blobs.items()},
            **(extra or {}),
        }
        _write(tmp / "state.json", json.dumps(state, indent=1, default=float).encode())
        if final.exists():  # the same step again (a resumed stage end): swap, then remove
            old = root / f"{name}.old.tmp"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        latest_tmp = root / "latest.tmp"
        _write(latest_tmp, (name + "\n").encode())
        os.replace(latest_tmp, root / "latest")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {describe_os_error(exc)}; "
                              "the previous checkpoints are kept") from None
    rotate(root, position.global_step, keep)
    return final


def _write(path: Path, data: bytes) -> None:
    """Write and fsync a file; an OS error names the file even when write() failed."""
    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def rotate(directory: Path, newest: int, keep: int) -> None:
    """Delete all but the checkpoint of step `newest` and the `keep - 1` before it.

    By step number, not by name; folders of later steps are left from a history that
    `newest` replaced (a resume from an earlier checkpoint), so they go too. Called only
    after `newest` and `latest` are written, so neither can be lost.
    """
    older = [p for s, p in checkpoints(directory) if s < newest]
    later = [p for s, p in checkpoints(directory) if s > newest]
    for old in later + older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(directory: str | Path) -> list[Path]:
    """Remove what a killed write left (`*.tmp`); only call while holding the run's lock."""
    root = Path(directory)
    stale = sorted(root.glob("*.tmp")) if root.is_dir() else []
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return stale


def load_training_state(path: str | Path, optimizer, scheduler) -> Position:
    """The optimizer, scheduler and RNG of a checkpoint (verified), and its position."""
    path = Path(path)
    state = read_state(path)
    opt_tensors = read_tensors(path, "optimizer.safetensors", state)
    opt_tensors.pop("_empty", None)
    rng = read_tensors(path, "rng.safetensors", state)
    try:
        _restore_optimizer(optimizer, opt_tensors, state["optimizer"])
        sched = scheduler.state_dict()
        sched.update(state.get("scheduler", {}))
        scheduler.load_state_dict(sched)
        torch.set_rng_state(rng["torch"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its optimizer, scheduler or RNG state does "
                              f"not fit this run ({type(exc).__name__}: {exc})") from None
    return Position(**state["position"])
