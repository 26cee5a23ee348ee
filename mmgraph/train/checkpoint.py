"""Writing checkpoints that lose nothing, and restoring a run's training state from one.

A checkpoint is a directory `step-00000123/` holding
- `model.safetensors`: the weights (tied weights once);
- `optimizer.safetensors` + the optimizer's scalar state in `state.json`;
- `state.json`: where training is (stage, step, epoch, batch), the scheduler, the RNG state,
  the settings, and the spec's fingerprint (hash, layers, parameter shapes).
An FSDP run (`mmgraph train --fsdp`) writes `sharded/` (torch.distributed.checkpoint: each
rank its slices of the weights and optimizer state) instead of the two tensor files, and adds
`model.safetensors` at the end of each stage; `consolidate` (`mmgraph convert-checkpoint`)
writes it for any other sharded checkpoint.
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
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from mmgraph.backends.torch.pretrained import sources as pretrained_sources
from mmgraph.backends.torch.weights import (
    FORMAT,
    CheckpointError,
    check_fingerprint,
    checkpoints,
    find,
    fingerprint,
    load_weights,
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
        state = _state(position, opt_scalars, scheduler, settings, g,
                       {k: list(v.shape) for k, v in weights.items()}, blobs, **(extra or {}))
        _write(tmp / "state.json", json.dumps(state, indent=1, default=float).encode())
        _swap_in(root, name, final, tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {describe_os_error(exc)}; "
                              "the previous checkpoints are kept") from None
    rotate(root, position.global_step, keep)
    return final


def _state(position: Position, optimizer, scheduler, settings: dict, g: Graph,
           shapes: dict, blobs: dict[str, bytes], **more) -> dict:
    """A checkpoint's state.json, whole or sharded: where training is, what the weights must
    fit (fingerprint, shapes), the pretrained folders used, and each file's sha256."""
    return {
        "format": FORMAT,
        "position": vars(position),
        "optimizer": optimizer,
        "scheduler": {k: v for k, v in scheduler.state_dict().items()
                      if isinstance(v, (int, float, list)) and k != "lr_lambdas"},
        "settings": settings,
        "fingerprint": fingerprint(g),
        "pretrained": pretrained_sources(g),  # folders and sha256 of their weight files
        "shapes": shapes,
        "files": {file: hashlib.sha256(data).hexdigest() for file, data in blobs.items()},
        **more,  # a sharded checkpoint's dtypes and process count; the caller's extra
    }


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


# ------------------------------------------------------------------ sharded (FSDP) checkpoints
SHARDED = "sharded"  # the folder of a checkpoint that holds torch.distributed.checkpoint shards


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDED).is_dir()


def _unique_names(model: torch.nn.Module) -> list[str]:
    """The state_dict names of the model, each tensor once (tied weights: the first name)."""
    seen, names = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            names.append(name)
    return names


def _tensor_state(optim_state: dict) -> tuple[dict, dict]:
    """An optimizer's per-parameter state (keyed by parameter name) split into its tensors
    (for the shards) and its other values (for state.json)."""
    tensors, scalars = {}, {}
    for fqn, values in optim_state.items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors.setdefault(fqn, {})[key] = value
            else:
                scalars.setdefault(fqn, {})[key] = value
    return tensors, scalars


def save_sharded(directory: str | Path, model: torch.nn.Module, optimizer, scheduler,
                 position: Position, g: Graph, settings: dict, world, keep: int = 3,
                 full: bool = False) -> Path:
    """A checkpoint of an FSDP run, written by every rank at once: `sharded/` holds each rank's
    slice of the weights and the optimizer state (torch.distributed.checkpoint, resumable on
    any number of processes), `state.json` and `rng.safetensors` are rank 0's (the ranks draw
    alike). With `full` (a stage's end) the weights are also gathered into `model.safetensors`,
    so eval, export and --init read it like any other checkpoint. Atomic as `save`: written
    under `.tmp`, renamed, then `latest`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    root = Path(directory)
    name = f"step-{position.global_step:08d}"
    final, tmp = root / name, root / f"{name}.tmp"
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    world.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    opt_tensors, opt_scalars = _tensor_state(optim_sd["state"])
    dcp.save({"model": model_sd, "optimizer": opt_tensors}, checkpoint_id=tmp / SHARDED)
    names = _unique_names(model)
    full_sd = None
    if full:
        full_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=True))
    if world.is_main:
        sd = model.state_dict()
        blobs = {"rng.safetensors": save_bytes({"torch": torch.get_rng_state()})}
        if full_sd is not None:
            blobs["model.safetensors"] = save_bytes({k: full_sd[k].contiguous()
                                                     for k in names})
        try:
            for file, data in blobs.items():
                _write(tmp / file, data)
            state = _state(
                position, {"param_groups": optim_sd["param_groups"], "state": opt_scalars},
                scheduler, settings, g, {k: list(sd[k].shape) for k in names}, blobs,
                dtypes={k: str(sd[k].dtype).removeprefix("torch.") for k in names},
                sharded={"processes": world.size})
            _write(tmp / "state.json", json.dumps(state, indent=1, default=float).encode())
            _swap_in(root, name, final, tmp)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint {final}: "
                                  f"{describe_os_error(exc)}; the previous checkpoints are "
                                  "kept") from None
        rotate(root, position.global_step, keep)
    world.barrier()
    return final


def _swap_in(root: Path, name: str, final: Path, tmp: Path) -> None:
    """Rename the written `tmp` folder to `final` and point `latest` at it."""
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


def load_sharded(path: str | Path, model: torch.nn.Module, optimizer, scheduler) -> Position:
    """Restore an FSDP run from a sharded checkpoint: each rank reads its slices of the
    weights and the optimizer state, then the scheduler and the RNG (verified)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    state = read_state(path)
    rng = read_tensors(path, "rng.safetensors", state)
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        opt_tensors, _ = _tensor_state(optim_sd["state"])
        target = {"model": model_sd, "optimizer": opt_tensors}
        dcp.load(target, checkpoint_id=path / SHARDED)
        saved = state["optimizer"]
        merged = {fqn: {**target["optimizer"].get(fqn, {}), **saved["state"].get(fqn, {})}
                  for fqn in set(target["optimizer"]) | set(saved["state"])}
        set_state_dict(model, optimizer, model_state_dict=target["model"],
                       optim_state_dict={"state": merged,
                                         "param_groups": saved["param_groups"]})
        sched = scheduler.state_dict()
        sched.update(state.get("scheduler", {}))
        scheduler.load_state_dict(sched)
        torch.set_rng_state(rng["torch"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its sharded weights, optimizer, scheduler "
                              f"or RNG state do not fit this run ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return Position(**state["position"])


def load_model_for_resume(path: Path, model: torch.nn.Module, g: Graph, *, fsdp: bool) -> dict:
    """The checkpoint's state, with its weights loaded into `model` unless they come later
    from the shards (an FSDP run loads them once the model is sharded). A checkpoint written
    by one kind of run resumes only the same kind: their optimizer states differ in form."""
    if is_sharded(path) != fsdp:
        how = ("was written by `mmgraph train --fsdp`: resume it with --fsdp, or convert it "
               "with `mmgraph convert-checkpoint` and start from it with --init") if not fsdp \
            else "was written without --fsdp: resume it without --fsdp"
        raise CheckpointError(f"checkpoint {path} {how}")
    if fsdp:
        state = read_state(path)
        check_fingerprint(path, state.get("fingerprint", {}), fingerprint(g), count_more=False)
        return state
    return load_weights(path, model, g)


def consolidate(path: str | Path) -> Path:
    """Write `model.safetensors` (every weight whole, one file) into a sharded checkpoint, so
    eval, export, --init and other tools read it; runs in one process, without the GPUs or the
    process count of the run that wrote it. Returns the checkpoint folder."""
    import torch.distributed.checkpoint as dcp

    path = find(path)
    if not is_sharded(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint (no {SHARDED}/ folder): its "
                              "model.safetensors already holds every weight")
    state = read_state(path)
    if "model.safetensors" in (state.get("files") or {}):
        return path
    try:
        tensors = {k: torch.empty(shape, dtype=getattr(torch, state["dtypes"][k]))
                   for k, shape in state["shapes"].items()}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": tensors}, checkpoint_id=path / SHARDED, no_dist=True)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read its shards "
                              f"({type(exc).__name__}: {exc})") from None
    data = save_bytes(tensors)
    try:
        _write(path / "model.safetensors.tmp", data)
        os.replace(path / "model.safetensors.tmp", path / "model.safetensors")
        state["files"] = {**state.get("files", {}),
                          "model.safetensors": hashlib.sha256(data).hexdigest()}
        _write(path / "state.json.tmp", json.dumps(state, indent=1, default=float).encode())
        os.replace(path / "state.json.tmp", path / "state.json")
    except OSError as exc:
        raise CheckpointError(f"cannot write {path / 'model.safetensors'}: "
                              f"{describe_os_error(exc)}") from None
    return path
