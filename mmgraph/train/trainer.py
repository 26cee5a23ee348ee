"""`mmgraph train`: the spec's losses, stage by stage, with exact resume.

Each stage trains what its `trainable` list names (the checker already resolved it to
instances), with its own learning rate, schedule and length, starting from the weights the
previous stage left. Every optimizer step is a pure function of (weights, optimizer state,
RNG state, data position); checkpoints hold all four, so a run killed at any moment and
resumed ends with the same weights, bit for bit, as one never stopped (on the CPU).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmgraph.backends.torch import weights
from mmgraph.ir.graph import Graph, Stage
from mmgraph.train import checkpoint as ckpt
from mmgraph.train import teachers as ema
from mmgraph.train.checkpoint import Position
from mmgraph.train.distributed import World, checkpoint_activations, env_world_size  # noqa: F401
from mmgraph.train.progress import Progress
from mmgraph.train.sources import DataError
from mmgraph.train.tasks import schedule_for

DEFAULT_STAGE = "train"  # the one stage of a spec whose train block declares none


@dataclass
class StagePlan:
    """A stage as the trainer runs it: settings merged over the train block's."""

    name: str
    trainable: list[str]
    settings: dict[str, Any]
    steps: int
    batches_per_epoch: int


@dataclass
class RunResult:
    out_dir: Path
    stages: list[dict] = field(default_factory=list)
    final_losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    finished_before: Position | None = None  # set when a resumed run had nothing left to do


def stage_names(stages: list[Stage]) -> list[str]:
    """The names `--stage` accepts: the spec's stages, or the one implicit stage."""
    return [st.name for st in stages] or [DEFAULT_STAGE]


def owner_of(param: str, instances: list[str]) -> str | None:
    """The instance a parameter belongs to: the longest instance name that prefixes it."""
    best = None
    for name in instances:
        if (param == name or param.startswith(name + ".")) and (best is None or
                                                                 len(name) > len(best)):
            best = name
    return best


def set_trainable(model: nn.Module, g: Graph, trainable: list[str]) -> int:
    """requires_grad as the stage says; returns the number of trainable parameters.

    A frozen layer with LoRA trains only its adapters; a frozen layer the stage names is
    unfrozen (and may leave eval mode) for that stage. What a component froze itself (a
    module marked `_mm_pinned`: LlamaFusion's frozen text modality) stays frozen.
    """
    wanted = set(trainable)
    names = list(g.instances)
    pinned = tuple(f"{name}." for name, m in model.named_modules()
                   if getattr(m, "_mm_pinned", False))
    count = 0
    for pname, p in model.named_parameters():
        inst = owner_of(pname, names)
        on = inst in wanted and not pname.startswith(pinned)
        if on and g.instances[inst].frozen and g.instances[inst].lora is not None:
            on = pname.rsplit(".", 1)[-1] in ("lora_a", "lora_b")
        p.requires_grad_(on)
        count += p.numel() if on else 0
    for name in wanted:
        inst = g.instances[name]
        if inst.frozen and inst.lora is None:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                continue
            module.__dict__.pop("train", None)  # undo freeze()'s eval-mode pin
    return count


def schedule_fn(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return fn


def make_optimizer(settings: dict, params) -> torch.optim.Optimizer:
    kind, lr, wd = settings["optimizer"], settings["lr"], settings["weight_decay"]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings["momentum"], weight_decay=wd)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(settings["betas"]), weight_decay=wd)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """fp32 on CPUs (bf16 matmul was measured at 0.3 GFLOP/s here, fp32 at 183); bf16 on GPUs
    that have it, unless the spec or the command line says otherwise."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Trainer:
    def __init__(self, model: nn.Module, g: Graph, out_dir: str | Path, *,
                 settings: dict, stages: list[Stage], batches: Callable, n_examples: int,
                 max_steps: int | None = None, log: Callable[[dict], None] | None = None,
                 quiet: bool = False, device: str | torch.device = "cpu", world=None,
                 on_stage_end: Callable | None = None,
                 validate: Callable[[int], Any] | None = None, extra_state: dict | None = None):
        """`batches(batch_size, seed, epoch, start)` gives an epoch's batches from `start` on;
        `validate(batch_size)` the validation data's batches (None: no validation); the
        checkpoints record `extra_state` (what data trained them)."""
        self.model, self.g = model, g
        self.out = Path(out_dir)
        self.settings, self.stages = settings, stages
        self.batches, self.n_examples = batches, n_examples
        self.max_steps = max_steps
        self.quiet = quiet
        self.device = torch.device(device)
        self.world = world  # a torch.distributed setup, or None
        self.log = log
        self.on_stage_end = on_stage_end
        self.validate, self.extra_state = validate, extra_state
        self._metrics = None  # the open metrics.jsonl
        self._teachers: list[ema.Teacher] = []  # the spec's ema_of(...) layers

    # ------------------------------------------------------------ planning
    def plans(self, only_stage: str | None = None) -> list[StagePlan]:
        """The stages to run (all, or the one named), refusing a batch larger than the data:
        an epoch without a full batch would leave the loop with nothing to step on."""
        out = []
        stages = self.stages or [Stage(DEFAULT_STAGE, {}, list(self.g.trainable_by_default),
                                       None)]
        if only_stage is not None:
            stages = [st for st in stages if st.name == only_stage]
        for st in stages:
            s = {**self.settings, **{k: v for k, v in st.settings.items() if k != "trainable"}}
            per_epoch = self.n_examples // s["batch_size"]
            if per_epoch < 1:
                where = f"stage {st.name}: " if self.stages else ""
                fix = (f"stage {st.name}'s batch_size in the spec" if "batch_size" in st.settings
                       else f"batch_size (e.g. --train batch_size={self.n_examples})")
                raise DataError(f"{where}batch_size {s['batch_size']} is larger than the data "
                                f"set ({self.n_examples} examples), so an epoch has no full "
                                f"batch; lower {fix} or use more data")
            if s.get("steps"):
                steps = s["steps"]
            else:
                steps = per_epoch * (s.get("epochs") or 1)
            steps = steps // s["grad_accum"] if s["grad_accum"] > 1 else steps
            if self.max_steps is not None:
                steps = min(steps, self.max_steps)
            out.append(StagePlan(st.name, st.trainable, s, steps, per_epoch))
        return out

    # ------------------------------------------------------------ running
    def run(self, resume: bool = False, only_stage: str | None = None) -> RunResult:
        plans = self.plans(only_stage)
        start = time.perf_counter()
        result = RunResult(self.out)
        position = Position()
        ckpt_dir = self.out / "checkpoints"
        resume_from = weights.latest(ckpt_dir) if resume else None
        if self.settings.get("activation_checkpointing"):
            checkpoint_activations(self.model)
        if resume_from is not None:
            state = ckpt.load_model_for_resume(resume_from, self.model, self.g, fsdp=self.fsdp)
            position = Position(**state["position"])
            last = len(plans) - 1
            if position.stage > last or (position.stage == last and
                                         position.step >= plans[last].steps):
                result.finished_before = position
                return result
            self.truncate_metrics(position.global_step)
            self.say(f"resuming from {resume_from} (stage {position.stage + 1}, "
                     f"step {position.step})")
        self._teachers = ema.teachers(self.model, self.g)
        if resume_from is None:  # a resume finds them in the checkpoint
            ema.start(self._teachers)
        for index, plan in enumerate(plans):
            if index < position.stage:
                continue
            fresh = index > position.stage or resume_from is None
            summary = self.run_stage(index, plan, position if not fresh else
                                     Position(stage=index, global_step=position.global_step),
                                     resume_from if not fresh else None)
            result.stages.append(summary)
            position = Position(stage=index + 1, global_step=summary["global_step"])
            resume_from = None
        result.seconds = time.perf_counter() - start
        if result.stages:
            result.final_losses = result.stages[-1]["final_losses"]
        return result

    def run_stage(self, index: int, plan: StagePlan, pos: Position,
                  resume_from: Path | None) -> dict:
        s = plan.settings
        count = set_trainable(self.model, self.g, plan.trainable)
        total = sum(p.numel() for p in self.model.parameters())
        self.say(f"stage {plan.name}: {plan.steps} steps, {count:,} of {total:,} parameters "
                 f"trainable ({', '.join(plan.trainable) or 'none'})")
        amp = autocast_dtype(s["precision"], self.device)
        # wrapped before the optimizer is made: FSDP replaces the parameters by their shards
        step_module = self.world.wrap(self.model, amp) if self.world else self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"stage {plan.name} has nothing to train")
        optimizer = make_optimizer(s, self.world.param_groups(params) if self.world else params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, schedule_fn(s["schedule"], s["warmup"], plan.steps))
        if resume_from is not None and self.fsdp:
            pos = ckpt.load_sharded(resume_from, self.model, optimizer, scheduler)
        elif resume_from is not None:
            pos = ckpt.load_training_state(resume_from, optimizer, scheduler)
        elif index == 0 and pos.global_step == 0:
            torch.manual_seed(s["seed"])
        resumed_at = pos.step if resume_from is not None else None
        if self.fsdp:
            amp = None  # FSDP computes in the precision of its MixedPrecisionPolicy
        step_module.train()
        progress = Progress(plan.name, plan.steps, quiet=self.quiet)
        progress.start(pos.step)
        last: dict[str, float] = {}
        accum = s["grad_accum"]
        ckpt_every = s.get("ckpt_every")
        batch_iter = self.iterate(plan, pos)
        tasks = schedule_for(s, {name: term.weight for name, term in self.g.losses.items()})
        samples, tick = 0, time.perf_counter()
        while pos.step < plan.steps:
            optimizer.zero_grad(set_to_none=True)
            logged: dict[str, float] = {}
            for _ in range(accum):
                batch, pos.epoch, pos.batch = next(batch_iter)
                if self.world:
                    batch = self.world.shard(batch)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                    _, losses = step_module(**batch, return_losses=True)
                (tasks.objective(losses, pos.step) / accum).backward()
                for k, v in losses.items():
                    logged[k] = logged.get(k, 0.0) + float(v.detach()) / accum
                samples += next(iter(batch.values())).shape[0] * (self.world.size
                                                                   if self.world else 1)
            if self.world:
                logged = self.world.mean(logged)
                self.world.average_replicated_grads()
            if s.get("clip") and self.world:
                self.world.clip_grad_norm(params, s["clip"])
            elif s.get("clip"):
                torch.nn.utils.clip_grad_norm_(params, s["clip"])
            optimizer.step()
            ema.update(self._teachers)
            scheduler.step()
            pos.step += 1
            pos.global_step += 1
            now = time.perf_counter()
            rate = samples / max(now - tick, 1e-9)
            last = logged
            record = {"stage": plan.name, "step": pos.step, "global_step": pos.global_step,
                      "epoch": pos.epoch, "lr": scheduler.get_last_lr()[0],
                      "samples_per_s": rate, **{f"loss/{k}": v for k, v in logged.items()}}
            if tasks.alternate:
                record["task"] = tasks.task(pos.step - 1)  # the loss this step optimised
            every = s.get("eval_every")
            if self.validate and (pos.step == plan.steps or (every and pos.step % every == 0)):
                record.update({f"val/{k}": v for k, v in self.validation(s, amp).items()})
            self.emit(record)
            progress.update(pos.step, logged["total"], record["lr"], rate,
                            record.get("val/total"))
            if ckpt_every and pos.step % ckpt_every == 0 and pos.step < plan.steps:
                self.save(pos, optimizer, scheduler)
        progress.close()
        if pos.step != resumed_at:  # a stage resumed at its end has nothing new to save
            self.save(pos, optimizer, scheduler, stage_end=True)
        if self.on_stage_end:
            self.on_stage_end(plan.name)
        return {"stage": plan.name, "steps": plan.steps, "trainable_params": count,
                "final_losses": last, "global_step": pos.global_step}

    def iterate(self, plan: StagePlan, pos: Position):
        """(batch, epoch, batches consumed) forever, starting at pos.

        An epoch read from its start that yields no batch raises: the loop can never spin
        without a step (plans() refuses that case up front; this holds by construction).
        """
        s = plan.settings
        epoch, start = pos.epoch, pos.batch
        while True:
            consumed = start
            for batch in self.batches(s["batch_size"], s["seed"], epoch, start):
                consumed += 1
                yield batch, epoch, consumed
            if consumed == 0:
                raise DataError(f"epoch {epoch} of stage {plan.name} gave no batch of "
                                f"{s['batch_size']} ({self.n_examples} examples); lower "
                                "batch_size")
            epoch, start = epoch + 1, 0

    def validation(self, s: dict, amp) -> dict[str, float]:
        """Each loss's mean over the validation data (weighted by batch size): eval mode, no
        gradients, and the training's random numbers left as they were, so a run with
        validation trains the same weights as one without. Every process computes it (FSDP
        needs them all for a forward pass); only the first writes it."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        sums: dict[str, float] = {}
        count = 0
        was_training = self.model.training
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.model.eval()
            try:
                for batch in self.validate(s["batch_size"]):
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    n = next(iter(batch.values())).shape[0]
                    with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                        _, losses = self.model(**batch, return_losses=True)
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v) * n
                    count += n
            finally:
                self.model.train(was_training)
        return {k: v / max(count, 1) for k, v in sums.items()}

    @property
    def fsdp(self) -> bool:
        return bool(self.world and self.world.fsdp)

    def save(self, pos: Position, optimizer, scheduler, stage_end: bool = False) -> None:
        self.flush_metrics()
        if self.fsdp:  # every rank writes its shards; a stage's end also as one file
            ckpt.save_sharded(self.out / "checkpoints", self.model, optimizer, scheduler, pos,
                              self.g, self.settings, self.world, keep=self.settings["keep"],
                              full=stage_end)
            return
        if self.world and not self.world.is_main:
            return
        ckpt.save(self.out / "checkpoints", self.model, optimizer, scheduler, pos, self.g,
                  self.settings, keep=self.settings["keep"], extra=self.extra_state)

    def truncate_metrics(self, global_step: int) -> None:
        """Drop the log lines of steps after the checkpoint: they are about to be redone
        (and a line cut short by a kill)."""
        path = self.out / "metrics.jsonl"
        if path.exists():
            steps = [(_step_of_line(line), line)
                     for line in path.read_text(errors="replace").splitlines()]
            kept = [line for step, line in steps if step is not None and step <= global_step]
            path.write_text("".join(line + "\n" for line in kept))

    def emit(self, record: dict) -> None:
        """One line of metrics.jsonl per step; buffered, and flushed before every checkpoint
        so that the log never lags behind what a resume restores."""
        if self.world and not self.world.is_main:
            return
        path = self.out / "metrics.jsonl"
        try:
            if self._metrics is None:
                self.out.mkdir(parents=True, exist_ok=True)
                self._metrics = open(path, "a")
            self._metrics.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise _naming(exc, path) from None
        if self.log:
            self.log(record)

    def flush_metrics(self) -> None:
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            try:
                metrics.close()
            except OSError as exc:
                raise _naming(exc, self.out / "metrics.jsonl") from None

    def say(self, text: str) -> None:
        if not self.quiet and not (self.world and not self.world.is_main):
            print(text, file=sys.stderr)


def _step_of_line(line: str) -> int | None:
    """The global step of one metrics.jsonl line, or None for a damaged one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("global_step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _naming(exc: OSError, path: Path) -> OSError:
    """The OS error with the file it concerns (a failed write() does not say)."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc
