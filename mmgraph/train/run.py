"""Training and evaluation runs as functions: what `mmgraph train` and `mmgraph eval` call."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mmgraph.backends.torch import weights
from mmgraph.backends.torch.pretrained import has_pretrained
from mmgraph.build import instantiate, load_class
from mmgraph.errors import UsageError, UserError
from mmgraph.ir.settings import TrainSettings
from mmgraph.suggest import did_you_mean
from mmgraph.train.plots import loss_png
from mmgraph.train.runfolder import claim
from mmgraph.train.trainer import Trainer, World, env_world_size, stage_names

SKIPPED_SHOWN = 5  # bad examples named one by one under --skip-bad; the rest are counted


def train_settings(g, overrides: dict[str, Any]) -> dict:
    """The spec's train settings with command-line overrides, validated (UsageError
    naming the setting)."""
    known = list(TrainSettings.model_fields)
    for name in overrides:
        if name not in known:
            hint = did_you_mean(name, known)
            raise UsageError(f"--train {name}: no such setting" + (f"; {hint}" if hint else "")
                             + f" (settings: {', '.join(known)})")
    base = dict(g.train.settings) if g.train else TrainSettings().model_dump()
    try:
        return TrainSettings.model_validate({**base, **overrides}).model_dump()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            given = f"={overrides[name]!r}" if name in overrides else " (from the spec)"
            problems.append(f"--train {name}{given}: {err['msg']}")
        raise UsageError("; ".join(problems)) from None


def available_devices() -> list[str]:
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(name: str) -> torch.device:
    """The device `name` names, refused before any work when it is not one or not here.

    `auto` (the default) is CUDA when this machine has it, else the CPU. Under torchrun each
    rank then takes its own GPU, cuda:LOCAL_RANK (mmgraph.train.distributed.local_device)."""
    here = ", ".join(available_devices())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device name; available here: "
                         f"{here}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r}: mmgraph trains on cpu, cuda or mps; available "
                         f"here: {here}")
    if device.type == "cuda" and (not torch.cuda.is_available() or
                                  (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: no such CUDA device on this machine (torch "
                        f"{torch.__version__} sees {torch.cuda.device_count()}); available "
                        f"here: {here}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device mps: Apple's Metal is not available here; available here: "
                        f"{here}")
    return device


def tensorboard_logger(out: Path):
    """A TensorBoard writer when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    writer = SummaryWriter(str(out / "tensorboard"))

    def log(record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "global_step", "epoch"):
                writer.add_scalar(key, value, record["global_step"])
        writer.flush()
    return log


def train(spec: str | Path, *, data: str = "digits", out: str | Path | None = None,
          overrides: dict | None = None, settings_overrides: dict | None = None,
          stage: str | None = None, max_steps: int | None = None, resume: bool = False,
          overwrite: bool = False, tokenizer: str | None = None, skip_bad: bool = False,
          allow_outside_data: bool = False, dims: dict | None = None, quiet: bool = False,
          model_name: str | None = None, device: str = "auto", lib_dirs=(),
          init: str | Path | None = None, fsdp: bool = False) -> dict:
    """Train a spec into the run folder `out`.

    `init` (a run folder or one of its checkpoints) gives the starting weights of a fresh run:
    every tensor, matched by name and shape; the optimizer and the step start anew.

    `fsdp` shards the model over the processes of a torchrun launch (or one process) with
    FSDP2 instead of replicating it with DDP (mmgraph.train.distributed).

    Everything that can be refused is checked before the folder is touched: the arguments,
    the settings, the device, the data (every example against the spec) and the batch size
    against the data. The folder is then claimed for this run (see runfolder.claim).
    """
    from mmgraph.train.batching import batches
    from mmgraph.train.preprocess import pretrained_tokenizer
    from mmgraph.train.sources import open_source
    from mmgraph.train.spec_dataset import SpecDataset
    from mmgraph.train.tokenize import make_tokenizer

    if max_steps is not None and max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {max_steps}")
    if resume and overwrite:
        raise UsageError("--resume continues the run in the folder and --overwrite deletes "
                         "it: give one of them")
    if resume and init is not None:
        raise UsageError("--resume continues the run in the folder (its weights, optimizer "
                         "and step) and --init starts a new one from a checkpoint's weights: "
                         "give one of them")
    torch_device = check_device(device)
    cls, g = load_class(spec, model_name, lib_dirs=lib_dirs, **(overrides or {}))
    settings = train_settings(g, settings_overrides or {})
    stages = g.train.stages if g.train else []
    names = stage_names(stages)
    if stage is not None and stage not in names:
        hint = did_you_mean(stage, names)
        raise UsageError(f"--stage {stage}: {g.name} has no such stage" +
                         (f"; {hint}" if hint else "") + f" (stages: {', '.join(names)})")
    out = Path(out or Path("runs") / g.name)
    # no --tokenizer: the one saved with the pretrained text parts, else bytes
    tok = make_tokenizer(tokenizer or pretrained_tokenizer(g))
    source = open_source(data, "train", skip_bad, allow_outside=allow_outside_data)
    dataset = SpecDataset(source, g, tok, dims, skip_bad=skip_bad)
    world = World(torch_device, fsdp=fsdp) if env_world_size() > 1 or fsdp else None
    torch_device = world.device if world else torch_device  # each rank its own GPU
    main_process = world is None or world.is_main
    if main_process:
        report_skipped(source.problems + dataset.problems)

    def make_batches(batch_size, seed, epoch, start):
        return batches(dataset, batch_size, seed, epoch, start)

    torch.manual_seed(settings["seed"])
    # pretrained parts start a fresh run; a resumed one takes every weight from its checkpoint
    continuing = resume and weights.latest(out / "checkpoints") is not None
    # --init: every weight from that checkpoint, so the pretrained folders are not read
    model = instantiate(cls, g, pretrained=not continuing and init is None)
    init_path = init_weights(init, model) if init is not None else None
    model = model.to(torch_device)
    trainer = Trainer(model, g, out, settings=settings, stages=stages,
                      batches=make_batches, n_examples=len(dataset), max_steps=max_steps,
                      quiet=quiet, device=torch_device, world=world,
                      on_stage_end=lambda name: main_process and loss_png(out))
    trainer.plans(stage)  # refuses a batch larger than the data, before the folder is touched
    folder = claim(out, resume=resume, overwrite=overwrite, say=trainer.say) if main_process \
        else nullcontext()
    with folder:
        trainer.log = tensorboard_logger(out) if main_process else None
        result = trainer.run(resume=resume, only_stage=stage)
    rank, size = (world.rank, world.size) if world else (0, 1)
    if world:
        world.close()
    done = result.finished_before
    return {"model": g.name, "out": str(out), "seconds": result.seconds,
            "stages": result.stages, "final_losses": result.final_losses,
            "examples": len(dataset), "skipped": len(source.problems + dataset.problems),
            "settings": settings, "rank": rank, "processes": size,
            "init": None if init_path is None else str(init_path),
            "already_finished": None if done is None else vars(done)}


def init_weights(init: str | Path, model: torch.nn.Module) -> Path:
    """Load every weight of `model` from an mmgraph checkpoint (a run folder or one of its
    checkpoints, verified as read: state.json and the tensors' sha256), matching tensors by
    name and shape and not by the spec's fingerprint, so a changed spec (other dropout, other
    stages, a renamed model) can start from it. Returns the checkpoint used."""
    p = Path(init)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "state.json").is_file():
        raise UserError(f"--init {init}: a Hugging Face folder, not an mmgraph checkpoint; "
                        "declare its layers with pretrained(PATH, part=...) in the spec instead")
    path = weights.find(p)
    state = weights.read_state(path)
    saved = weights.read_tensors(path, "model.safetensors", state)
    now = weights.unique_state(model)
    problems = [f"'{k}' is missing from the checkpoint" for k in now if k not in saved]
    problems += [f"'{k}' is in the checkpoint but not in the model" for k in saved
                 if k not in now]
    problems += [f"'{k}': {list(saved[k].shape)} in the checkpoint, {list(t.shape)} in the "
                 "model" for k, t in now.items() if k in saved and saved[k].shape != t.shape]
    if problems:
        raise weights.CheckpointError(
            f"--init {path} does not fit the spec's model ({len(problems)} tensor"
            f"{'s' if len(problems) != 1 else ''}):\n  " + "\n  ".join(problems[:20]) +
            (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    model.load_state_dict(saved, strict=False)
    return path


def report_skipped(problems: list[str]) -> None:
    """Under --skip-bad, say what was left out and why: the first few, then the count."""
    if not problems:
        return
    print(f"skipped {len(problems)} bad example{'s' if len(problems) != 1 else ''}:",
          file=sys.stderr)
    for problem in problems[:SKIPPED_SHOWN]:
        print(f"  {problem}", file=sys.stderr)
    if len(problems) > SKIPPED_SHOWN:
        print(f"  ... and {len(problems) - SKIPPED_SHOWN} more", file=sys.stderr)


def load_trained(spec: str | Path, checkpoint: str | Path | None, overrides: dict | None = None,
                 model_name: str | None = None, lib_dirs=()):
    """The spec's model with a checkpoint's weights (refused when they do not match); without
    a checkpoint, with the weights of its pretrained(...) parts (path None)."""
    cls, g = load_class(spec, model_name, lib_dirs=lib_dirs, **(overrides or {}))
    if checkpoint is None:
        if not has_pretrained(g):
            raise UsageError(f"give --checkpoint DIR: {g.name} declares no pretrained(...) "
                             "part, so its weights would be random")
        return instantiate(cls, g).eval(), g, None
    model = instantiate(cls, g, pretrained=False)  # every weight comes from the checkpoint
    path = weights.find(checkpoint)
    weights.load_weights(path, model, g)
    return model.eval(), g, path


def write_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float)
