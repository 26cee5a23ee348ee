"""What a spec's `train` and `export` blocks may set: the schemas of the IR's train and export
plans, with their defaults, ranges and choices. The passes validate the blocks against them;
`mmgraph train` validates its command-line overrides against the same ones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmgraph.ir.schema import Settings


class StageSettings(Settings):
    trainable: tuple[str, ...] | None = None
    epochs: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    warmup: int | None = Field(None, ge=0)
    schedule: Literal["constant", "cosine", "linear"] | None = None
    batch_size: int | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    losses: tuple[str, ...] | None = None  # which of the model's losses this stage uses
    # "alternate": step i optimises only losses[i % k] (IMP's per-step task alternation);
    # None / "joint": every step optimises their weighted sum
    tasks: Literal["joint", "alternate"] | None = None


class TrainSettings(Settings):
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup: int = Field(0, ge=0)
    epochs: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    clip: float | None = Field(None, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0
    eval_every: int | None = Field(None, gt=0)  # validation loss every N steps (with --val)
    ckpt_every: int | None = Field(None, gt=0)
    keep: int = Field(3, gt=0)
    ema: float | None = Field(None, gt=0, lt=1)
    tasks: Literal["joint", "alternate"] | None = None  # see StageSettings.tasks
    # data: None means automatic (workers: 0 for in-memory data, up to 4 when files are
    # decoded; chat_template: the tokenizer's own, else "vicuna"; truncation: "report")
    workers: int | None = Field(None, ge=0, le=64)  # DataLoader worker processes
    chat_template: str | None = None  # "vicuna", "chatml", "plain" or a jinja2 template
    truncation: Literal["report", "refuse"] | None = None  # text longer than its input
    # recompute each block's activations in the backward pass: less memory, ~1 more forward
    # (None: off, and left out of the IR's text like the other unset settings)
    activation_checkpointing: bool | None = None


class ExportSettings(Settings):
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    opset: int = Field(18, ge=13, le=23)
    target: str | None = None
    workspace_mb: int = Field(1024, gt=0)
    batch: Literal["dynamic", "static"] = "dynamic"
