"""Training and evaluation runs as functions: what `mmgraph train` and `mmgraph eval` call."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from mmgraph.backends.torch.load import load_class
from mmgraph.ir.passes.trainability import TrainSettings
from mmgraph.train import checkpoint as ckpt
from mmgraph.train.plots import loss_png
from mmgraph.train.trainer import Trainer, World, env_world_size


def train_settings(g, overrides: dict[str, Any]) -> dict:
    """The spec's train settings with command-line overrides, validated."""
    base = dict(g.train.settings) if g.train else TrainSettings().model_dump()
    merged = {**base, **overrides}
    return TrainSettings.model_validate(merged).model_dump()


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
          tokenizer: str | None = None, skip_bad: bool = False, dims: dict | None = None,
          quiet: bool = False, model_name: str | None = None, device: str = "cpu") -> dict:
    from mmgraph.train.data import SpecDataset, batches, open_source
    from mmgraph.train.tokenize import make_tokenizer

    cls, g = load_class(spec, model_name, **(overrides or {}))
    settings = train_settings(g, settings_overrides or {})
    out = Path(out or Path("runs") / g.name)
    world = World() if env_world_size() > 1 else None
    torch.manual_seed(settings["seed"])
    model = cls().to(device)
    model.graph = g
    tok = make_tokenizer(tokenizer)
    source = open_source(data, "train", skip_bad)
    dataset = SpecDataset(source, g, tok, dims)
    if getattr(source, "skipped", 0):
        print(f"skipped {source.skipped} bad examples", file=sys.stderr)

    def make_batches(batch_size, seed, epoch, start):
        return batches(dataset, batch_size, seed, epoch, start)

    stages = g.train.stages if g.train else []
    log = tensorboard_logger(out) if (world is None or world.is_main) else None
    trainer = Trainer(model, g, out, settings=settings, stages=stages,
                      batches=make_batches, n_examples=len(dataset), max_steps=max_steps,
                      quiet=quiet, device=device, world=world, log=log,
                      on_stage_end=lambda name: (world is None or world.is_main) and
                      loss_png(out))
    result = trainer.run(resume=resume, only_stage=stage)
    rank, size = (world.rank, world.size) if world else (0, 1)
    if world:
        world.close()
    return {"model": g.name, "out": str(out), "seconds": result.seconds,
            "stages": result.stages, "final_losses": result.final_losses,
            "examples": len(dataset), "settings": settings, "rank": rank, "processes": size}


def load_trained(spec: str | Path, checkpoint: str | Path, overrides: dict | None = None,
                 model_name: str | None = None):
    """The spec's model with a checkpoint's weights (refused when they do not match)."""
    cls, g = load_class(spec, model_name, **(overrides or {}))
    model = cls()
    model.graph = g
    path = ckpt.find(checkpoint)
    ckpt.load_weights(path, model, g)
    return model.eval(), g, path


def write_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float)
