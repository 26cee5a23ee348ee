"""Checkpoints, found and verified: what training writes and training, export and bench load.

A checkpoint is a directory `step-00000123/` holding `model.safetensors` (the weights, tied
weights once), `optimizer.safetensors`, `rng.safetensors` and `state.json`: where training is,
the settings, the spec's fingerprint (hash, layers, parameter shapes) and the sha256 of every
tensor file. Loading verifies the checksums and the fingerprint and refuses non-finite
weights, so a damaged checkpoint or one of another spec is named instead of evaluated.
Nothing is unpickled: tensors go through safetensors, everything else through JSON. Writing
(atomically, with rotation) is the trainer's: `mmgraph.train.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes

from mmgraph.errors import UserError
from mmgraph.ir.graph import Graph

FORMAT = 1
STEP_NAME = re.compile(r"step-(\d{8,})")


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the reason for people."""


def fingerprint(g: Graph) -> dict[str, Any]:
    """What a checkpoint must agree with: the layers and their parameters, by name. `items`
    and `at_default` let `compare` accept a checkpoint written before a component gained a
    parameter that the spec leaves at its default."""
    items = {name: inst.param_items(defaults=True) for name, inst in g.instances.items()}
    # the text params_text(defaults=True) writes, from the items already read
    layers = {name: f"{inst.component}({', '.join(f'{k}={v}' for k, v in items[name])})"
              for name, inst in g.instances.items()}
    text = json.dumps(layers, sort_keys=True)
    set_now = {name: {k for k, _ in inst.param_items()} for name, inst in g.instances.items()}
    at_default = {name: [k for k, _ in items[name] if k not in set_now[name]]
                  for name in items}
    return {"hash": hashlib.sha256(text.encode()).hexdigest()[:16], "model": g.name,
            "layers": layers, "items": items, "at_default": at_default}


def _without_newer_defaults(saved_text: str, current: dict, name: str) -> str | None:
    """The spec's text of layer `name` without the parameters the checkpoint does not name
    and the spec leaves at their defaults: parameters added to the component later."""
    items, at_default = current["items"].get(name), current["at_default"].get(name, [])
    if items is None:
        return None
    saved_keys = set(re.findall(r"(?:\(|, )(\w+)=", saved_text))
    later = {k for k in at_default if k not in saved_keys}
    component = current["layers"][name].split("(", 1)[0]
    return f"{component}({', '.join(f'{k}={v}' for k, v in items if k not in later)})"


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
        if a[name] != b[name] and _without_newer_defaults(a[name], current, name) != a[name]:
            out.append(f"layer '{name}': checkpoint has {a[name]}, spec has {b[name]}")
    if not out:
        for name in sorted(set(shapes_saved) & set(shapes_now)):
            if shapes_saved[name] != shapes_now[name]:
                out.append(f"weight '{name}': {shapes_saved[name]} vs {shapes_now[name]}")
    return out


def check_fingerprint(path: str | Path, saved: dict, now: dict, shapes_saved: dict | None = None,
                      shapes_now: dict | None = None, *, count_more: bool = True) -> None:
    """Refuse a checkpoint whose fingerprint `saved` (and weight shapes, when given) differ from
    the spec's `now`, listing the first 20 differences (`count_more`: and how many more). It
    compares only when the hash or the shapes differ, and a differing hash alone refuses
    nothing when `compare` finds no difference (a parameter added since, at its default)."""
    if saved.get("hash") == now["hash"] and shapes_saved == shapes_now:
        return
    diffs = compare(saved, now, shapes_saved or {}, shapes_now or {})
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match the spec:\n  " +
                              "\n  ".join(diffs[:20]) +
                              (f"\n  ... and {len(diffs) - 20} more"
                               if count_more and len(diffs) > 20 else ""))


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


def step_of(path: Path) -> int | None:
    """The global step of a checkpoint folder `step-00000123`, or None for anything else."""
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """The complete checkpoints under `directory` (state.json written), oldest step first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None and (p / "state.json").is_file())


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under `directory`, or None.

    `latest` names it; when that file is missing, damaged or names no complete checkpoint
    of this folder, the highest step present is used.
    """
    root = Path(directory)
    pointer = root / "latest"
    try:
        name = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    except (OSError, UnicodeDecodeError):
        name = ""
    if STEP_NAME.fullmatch(name) and (root / name / "state.json").is_file():
        return root / name
    done = checkpoints(root)
    return done[-1][1] if done else None


def find(path: str | Path) -> Path:
    """A checkpoint directory, or the newest one inside a run directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {path} not found (give a run folder or one of its "
                              "checkpoints/step-* folders)")
    if (p / "state.json").exists():
        return p
    for root in (p / "checkpoints", p):
        found = latest(root)
        if found is not None:
            return found
    raise CheckpointError(f"no checkpoint in {path} (looked for state.json in it, in "
                          f"{p / 'checkpoints'} and its step-* folders)")


# ------------------------------------------------------------------ reading, verified
class _PositionModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    stage: NonNegativeInt
    step: NonNegativeInt
    epoch: NonNegativeInt
    batch: NonNegativeInt
    global_step: NonNegativeInt


class _StateModel(BaseModel):
    """What state.json must hold; `files` is absent only in checkpoints older than checksums."""

    model_config = ConfigDict(extra="allow")
    format: int
    position: _PositionModel
    optimizer: dict
    fingerprint: dict
    shapes: dict[str, list[int]]
    scheduler: dict = {}
    files: dict[str, str] | None = None


def read_state(path: str | Path) -> dict:
    """A checkpoint's state.json, parsed and checked (CheckpointError naming what is wrong)."""
    file = Path(path) / "state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: {path} is not a complete checkpoint") \
            from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{file} is damaged: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is damaged: not valid JSON ({exc.msg} at line "
                              f"{exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{file} is damaged: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is damaged: expected a JSON object")
    try:
        checked = _StateModel.model_validate(state)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise CheckpointError(f"{file} is damaged: {where}: {first['msg'].lower()}") from None
    if checked.format != FORMAT:
        raise CheckpointError(f"{file} has checkpoint format {checked.format}; this mmgraph "
                              f"reads format {FORMAT}")
    return state


def read_tensors(path: str | Path, file: str, state: dict) -> dict[str, torch.Tensor]:
    """One tensor file of a checkpoint, verified against the sha256 in state.json, with
    every floating-point tensor finite."""
    where = Path(path) / file
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        if (Path(path) / "sharded").is_dir():  # an --fsdp checkpoint: its shards, not one file
            raise CheckpointError(
                f"{where} is missing: {path} is a sharded (--fsdp) checkpoint; gather it "
                f"into one file with `mmgraph convert-checkpoint {path}`") from None
        raise CheckpointError(f"{where} is missing: the checkpoint is incomplete; use an "
                              "earlier one (checkpoints/step-*) or train again") from None
    sums = state.get("files")
    if sums is not None:
        if file not in sums:
            raise CheckpointError(f"{Path(path) / 'state.json'} records no checksum for {file}")
        if hashlib.sha256(data).hexdigest() != sums[file]:
            raise CheckpointError(f"{where} is damaged: its sha256 differs from the one in "
                                  f"{Path(path) / 'state.json'}; use an earlier checkpoint "
                                  "(checkpoints/step-*) or train again")
    try:
        tensors = load_bytes(data)
    except SafetensorError as exc:
        raise CheckpointError(f"{where} is damaged: not a readable safetensors file "
                              f"({exc})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor '{name}' holds NaN or infinite values; "
                                  "use an earlier checkpoint (checkpoints/step-*)")
    return tensors


def load_weights(path: str | Path, model: torch.nn.Module, g: Graph) -> dict:
    """Load weights into `model`, refusing a checkpoint of another spec (saying what differs)
    or a damaged one (naming the file)."""
    path = Path(path)
    state = read_state(path)
    now = fingerprint(g)
    shapes_now = {k: list(v.shape) for k, v in unique_state(model).items()}
    check_fingerprint(path, state.get("fingerprint", {}), now, state.get("shapes", {}),
                      shapes_now)
    weights = read_tensors(path, "model.safetensors", state)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of the right name and the wrong shape
        raise CheckpointError(f"{path / 'model.safetensors'} does not fit the model: "
                              f"{str(exc).splitlines()[-1].strip()}") from None
    tied = {k for k in missing if k not in shapes_now}  # second names of tied weights
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")
    return state
