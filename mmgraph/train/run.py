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
from mmgraph.backends.torch.inputs import default_dims
from mmgraph.backends.torch.pretrained import has_pretrained
from mmgraph.build import instantiate, load_class
from mmgraph.errors import UsageError, UserError
from mmgraph.ir.settings import TrainSettings
from mmgraph.suggest import did_you_mean
from mmgraph.train.plots import loss_png
from mmgraph.train.runfolder import claim
from mmgraph.train.trainer import Trainer, World, env_world_size, stage_names

SKIPPED_SHOWN = 5  # bad examples named one by one under --skip-bad; the rest are counted


def data_dims(g, dims: dict | None) -> dict:
    """The sizes of the free dims data is read at: `--dims`, else the export block's opt
    size (a spec that says `dim T = 1..59 @ 40` trains at T=40 without --dims)."""
    return {**default_dims(g), **(dims or {})}


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


TENSORBOARD_MISSING = ("--tensorboard: the tensorboard package is not installed, so no "
                      "TensorBoard log is written (metrics.jsonl and loss.png are); install it "
                      "with pip install 'mmgraph[tensorboard]'")


def tensorboard_logger(out: Path, say=lambda text: print(text, file=sys.stderr)):
    """A TensorBoard writer into out/tensorboard; None, said in one line, when the
    tensorboard package (the `tensorboard` extra) is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        say(TENSORBOARD_MISSING)
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
          init: str | Path | None = None, fsdp: bool = False, val: str | None = None,
          workers: int | None = None, tensorboard: bool = False) -> dict:
    """Train a spec into the run folder `out`.

    `val` is a fraction of the data held out (e.g. "0.1") or a data set (.jsonl file, image
    folder) whose losses are computed every `eval_every` steps and at each stage's end into
    metrics.jsonl. `workers` (the `workers` train setting) reads data in that many processes.
    `tensorboard` also logs every metric into out/tensorboard.

    `init` (a run folder or one of its checkpoints) gives the starting weights of a fresh run:
    every tensor, matched by name and shape; the optimizer and the step start anew.

    `fsdp` shards the model over the processes of a torchrun launch (or one process) with
    FSDP2 instead of replicating it with DDP (mmgraph.train.distributed).

    Everything that can be refused is checked before the folder is touched: the arguments,
    the settings, the device, the data (every example against the spec) and the batch size
    against the data. The folder is then claimed for this run (see runfolder.claim).
    """
    from mmgraph.train.batching import Loader, auto_workers
    from mmgraph.train.preprocess import pretrained_tokenizer
    from mmgraph.train.sources import open_source
    from mmgraph.train.spec_dataset import SpecDataset, hold_out
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
    fraction = val_fraction(val)
    torch_device = check_device(device)
    cls, g = load_class(spec, model_name, lib_dirs=lib_dirs, **(overrides or {}))
    if workers is not None:
        settings_overrides = {**(settings_overrides or {}), "workers": workers}
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
    text = {"chat_template": settings["chat_template"], "truncation": settings["truncation"]}
    source = open_source(data, "train", skip_bad, allow_outside=allow_outside_data)
    dims = data_dims(g, dims)
    full = SpecDataset(source, g, tok, dims, skip_bad=skip_bad, **text)
    dataset, val_set, val_source, val_full = full, None, None, None
    if fraction is not None:
        dataset, val_set = hold_out(full, fraction, settings["seed"])
    elif val is not None:
        val_source = open_source(val, "val", skip_bad, allow_outside=allow_outside_data)
        if val_source.origin == source.origin:
            raise UsageError(f"--val {val}: that is the training data itself ({source.name}); "
                             "give a held-out file, or a fraction such as --val 0.1")
        val_set = val_full = SpecDataset(val_source, g, tok, dims, skip_bad=skip_bad, **text)
    world = World(torch_device, fsdp=fsdp) if env_world_size() > 1 or fsdp else None
    torch_device = world.device if world else torch_device  # each rank its own GPU
    main_process = world is None or world.is_main
    problems = source.problems + full.problems
    if main_process:
        report_skipped(problems)
        if val_full is not None:
            report_skipped(val_source.problems + val_full.problems)
        for data_set in filter(None, (full, val_full)):
            for line in data_set.cut_report() + data_set.padding_notes():
                print(f"note: {line}", file=sys.stderr)
    n_workers = settings["workers"] if settings["workers"] is not None else auto_workers(source)
    pin = torch_device.type == "cuda"
    loader = Loader(dataset, n_workers, settings["seed"], pin_memory=pin)
    val_loader = Loader(val_set, n_workers, settings["seed"], pin_memory=pin, drop_last=False) \
        if val_set is not None else None
    provenance = {"data": {"train": source.origin, "val": None if val is None else (
        f"{fraction:g} of the training data" if fraction is not None else val_source.origin)}}

    torch.manual_seed(settings["seed"])
    # pretrained parts start a fresh run; a resumed one takes every weight from its checkpoint
    continuing = resume and weights.latest(out / "checkpoints") is not None
    # --init: every weight from that checkpoint, so the pretrained folders are not read
    model = instantiate(cls, g, pretrained=not continuing and init is None)
    init_path = init_weights(init, model) if init is not None else None
    model = model.to(torch_device)
    trainer = Trainer(model, g, out, settings=settings, stages=stages,
                      batches=loader.epoch, n_examples=len(dataset), max_steps=max_steps,
                      quiet=quiet, device=torch_device, world=world,
                      on_stage_end=lambda name: main_process and loss_png(out),
                      validate=(lambda size: val_loader.epoch(size, 0, 0)) if val_loader
                      else None, extra_state=provenance)
    trainer.plans(stage)  # refuses a batch larger than the data, before the folder is touched
    folder = claim(out, resume=resume, overwrite=overwrite, say=trainer.say) if main_process \
        else nullcontext()
    try:
        with folder:
            trainer.log = tensorboard_logger(out) if main_process and tensorboard else None
            result = trainer.run(resume=resume, only_stage=stage)
    finally:
        loader.close()
        if val_loader:
            val_loader.close()
    rank, size = (world.rank, world.size) if world else (0, 1)
    if world:
        world.close()
    done = result.finished_before
    return {"model": g.name, "out": str(out), "seconds": result.seconds,
            "stages": result.stages, "final_losses": result.final_losses,
            "examples": len(dataset), "validation_examples": len(val_set) if val_set else 0,
            "skipped": len(problems), "cut": {c.input: len(c.cut) for c in full.cuts.values()},
            "workers": n_workers, "settings": settings, "rank": rank, "processes": size,
            "init": None if init_path is None else str(init_path),
            "already_finished": None if done is None else vars(done)}


def val_fraction(val: str | None) -> float | None:
    """--val as a fraction of the training data to hold out, or None when it names data (or
    is not given); a number outside (0, 1) is refused."""
    if val is None:
        return None
    try:
        number = float(val)
    except ValueError:
        return None
    if not 0 < number < 1:
        raise UsageError(f"--val {val}: a fraction of the data to hold out is between 0 and 1 "
                         "(e.g. --val 0.1); or name a held-out .jsonl file or image folder")
    return number


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


def evaluate_spec(spec: str | Path, checkpoint: str | Path | None, *, data: str = "digits",
                  split: str = "test", tokenizer: str | None = None, dims: dict | None = None,
                  allow_outside_data: bool = False, overrides: dict | None = None,
                  model_name: str | None = None, lib_dirs=()) -> dict:
    """`mmgraph eval`: the metrics of a checkpoint (or of the pretrained parts) on the
    `split` of `data`, never on the data it was trained on unless `split` is "train"; the
    result's "evaluated_on" says which file and split were read."""
    from mmgraph.train.evaluate import eval_source, evaluate
    from mmgraph.train.preprocess import pretrained_tokenizer
    from mmgraph.train.spec_dataset import SpecDataset
    from mmgraph.train.tokenize import make_tokenizer

    model, g, path = load_trained(spec, checkpoint, overrides, model_name, lib_dirs)
    trained_on = weights.read_state(path).get("data") if path is not None else None
    settings = train_settings(g, {})
    tok = make_tokenizer(tokenizer or pretrained_tokenizer(g))
    source, described = eval_source(data, split, trained_on, allow_outside_data)
    dataset = SpecDataset(source, g, tok, data_dims(g, dims),
                          chat_template=settings["chat_template"],
                          truncation=settings["truncation"])
    for line in dataset.cut_report():
        print(f"note: {line}", file=sys.stderr)
    results = evaluate(model, g, source, dataset, tok)
    return {"model": g.name, "checkpoint": str(path) if path else None, "data": data,
            "split": split if source.split == split or split == "train" else None,
            "evaluated_on": described, **results}


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
