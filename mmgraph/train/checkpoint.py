"""Checkpoints that lose nothing and trust nothing.

A checkpoint is a directory `step-00000123/` holding
- `model.safetensors`: the weights (tied weights once);
- `optimizer.safetensors` + the optimizer's scalar state in `state.json`;
- `state.json`: where training is (stage, step, epoch, batch), the scheduler, the RNG state,
  the settings, and the spec's fingerprint (hash, layers, parameter shapes).
It is written to `step-00000123.tmp/` and renamed into place, then `latest` (a one-line file)
is replaced atomically, so a run killed at any instant leaves the previous checkpoint intact.
Nothing is unpickled: tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmgraph.errors import UserError
from mmgraph.ir.graph import Graph


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the reason for people."""


def fingerprint(g: Graph) -> dict[str, Any]:
    """What a checkpoint must agree with: the layers and their parameters, by name."""
    layers = {name: f"{inst.component}({inst.params_text(defaults=True)})"
              for name, inst in g.instances.items()}
    text = json.dumps(layers, sort_keys=True)
    return {"hash": hashlib.sha256(text.encode()).hexdigest()[:16], "model": g.name,
            "layers": layers}


def compare(saved: dict, current: dict, shapes_saved: dict, shapes_now: dict) -> list[str]:
    """Human-readable differences between a checkpoint's fingerprint and the spec's."""
    out = []
    if saved.get("model") != current["model"]:
        out.append(f"model is '{saved.get('model')}' in the checkpoint, '{current['model']}' "
                   "in the spec")
    a, b = saved.get("layers", {}), current["layers"]
    for name in sorted(set(a) - set(b)):
        out.append(f"layer '{name}' is in the checkpoint but not in the spec")
    for name in sorted(set(b) - set(a)):
        out.append(f"layer '{name}' is in the spec but not in the checkpoint")
    for name in sorted(set(a) & set(b)):
        if a[name] != b[name]:
            out.append(f"layer '{name}': checkpoint has {a[name]}, spec has {b[name]}")
    if not out:
        for name in sorted(set(shapes_saved) & set(shapes_now)):
            if shapes_saved[name] != shapes_now[name]:
                out.append(f"weight '{name}': {shapes_saved[name]} vs {shapes_now[name]}")
    return out


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers, each tensor once (tied weights)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


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
    """Write a checkpoint atomically and keep only the newest `keep`."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{position.global_step:08d}"
    final, tmp = root / name, root / f"{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = unique_state(model)
    save_file(weights, str(tmp / "model.safetensors"))
    opt_tensors, opt_scalars = _optimizer_state(optimizer)
    save_file(opt_tensors or {"_empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    save_file(rng, str(tmp / "rng.safetensors"))
    state = {
        "format": 1,
        "position": vars(position),
        "optimizer": opt_scalars,
        "scheduler": {k: v for k, v in scheduler.state_dict().items()
                      if isinstance(v, (int, float, list)) and k != "lr_lambdas"},
        "settings": settings,
        "fingerprint": fingerprint(g),
        "shapes": {k: list(v.shape) for k, v in weights.items()},
        **(extra or {}),
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=float))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / "latest.tmp"
    latest_tmp.write_text(name + "\n")
    os.replace(latest_tmp, root / "latest")
    for old in sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under `directory`, or None."""
    root = Path(directory)
    pointer = root / "latest"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").exists():
            return candidate
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists()
                  and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def find(path: str | Path) -> Path:
    """A checkpoint directory, or the newest one inside a run directory."""
    p = Path(path)
    if (p / "state.json").exists():
        return p
    for root in (p / "checkpoints", p):
        found = latest(root)
        if found is not None:
            return found
    raise CheckpointError(f"no checkpoint in {path} (looked for state.json in it, in "
                          f"{p / 'checkpoints'} and its step-* folders)")


def read_state(path: str | Path) -> dict:
    return json.loads((Path(path) / "state.json").read_text())


def load_weights(path: str | Path, model: torch.nn.Module, g: Graph) -> dict:
    """Load weights into `model`, refusing a checkpoint of another spec (saying what differs)."""
    path = Path(path)
    state = read_state(path)
    weights = load_file(str(path / "model.safetensors"))
    now = fingerprint(g)
    shapes_now = {k: list(v.shape) for k, v in unique_state(model).items()}
    saved = state.get("fingerprint", {})
    if saved.get("hash") != now["hash"] or state.get("shapes") != shapes_now:
        diffs = compare(saved, now, state.get("shapes", {}), shapes_now)
        if diffs:
            raise CheckpointError(f"checkpoint {path} does not match the spec:\n  " +
                                  "\n  ".join(diffs[:20]) +
                                  (f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20
                                   else ""))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k not in shapes_now}  # second names of tied weights
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")
    return state


def load_training_state(path: str | Path, optimizer, scheduler) -> Position:
    path = Path(path)
    state = read_state(path)
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    opt_tensors.pop("_empty", None)
    _restore_optimizer(optimizer, opt_tensors, state["optimizer"])
    sched = scheduler.state_dict()
    sched.update(state.get("scheduler", {}))
    scheduler.load_state_dict(sched)
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    return Position(**state["position"])
