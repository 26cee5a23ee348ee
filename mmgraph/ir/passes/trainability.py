"""Pass `trainability`: the `train` block and what each stage trains.

Settings are validated against `TrainSettings`/`StageSettings`; a stage's `trainable` list
names layers (a block or repeat name covers everything inside it), roles (`encoder`, ...)
or `all`. Layers declared `frozen` stay frozen unless a stage names them (or the frozen
declaration that contains them) explicitly. The result is each stage's list of trainable
instances, which the trainer uses as is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmgraph.ir.consts import BUILTIN_CONSTS
from mmgraph.ir.graph import Graph, Stage, TrainPlan
from mmgraph.ir.passes.base import Compilation
from mmgraph.ir.passes.expand import to_plain
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, SpecError, did_you_mean, error

ROLES = ("encoder", "connector", "fusion", "decoder", "head", "layer")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageSettings(_Settings):
    trainable: tuple[str, ...] | None = None
    epochs: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    warmup: int | None = Field(None, ge=0)
    schedule: Literal["constant", "cosine", "linear"] | None = None
    batch_size: int | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    losses: tuple[str, ...] | None = None  # which of the model's losses this stage uses


class TrainSettings(_Settings):
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
    eval_every: int | None = Field(None, gt=0)
    ckpt_every: int | None = Field(None, gt=0)
    keep: int = Field(3, gt=0)
    ema: float | None = Field(None, gt=0, lt=1)


def evaluate_setting(expr, env: dict[str, Any]) -> Any:
    """Like constant evaluation, but a bare unknown name is a symbol: `precision = bf16`."""
    from mmgraph.ir.consts import evaluate

    if isinstance(expr, ast.Name) and expr.id not in env and expr.id not in BUILTIN_CONSTS:
        return expr.id
    if isinstance(expr, ast.ListExpr):
        return [evaluate_setting(i, env) for i in expr.items]
    return evaluate(expr, env)


def validate_settings(schema, settings: tuple[ast.Setting, ...], env, code: str, where: str):
    values, spans, problems = {}, {}, []
    for s in settings:
        if s.name.name in values:
            problems.append(Diagnostic(code, f"'{s.name.name}' is set twice in {where}",
                                       s.name.span))
            continue
        try:
            values[s.name.name] = to_plain(evaluate_setting(s.value, env))
            spans[s.name.name] = s
        except SpecError as exc:
            problems.extend(exc.diagnostics)
    if problems:
        raise SpecError(problems)
    try:
        return schema.model_validate(values, strict=False), spans
    except ValidationError as exc:
        fields = list(schema.model_fields)
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else None
            s = spans.get(name)
            if err["type"] == "extra_forbidden":
                problems.append(Diagnostic(code, f"unknown setting '{name}' in {where}",
                                           s.name.span, hint=did_you_mean(name, fields) or
                                           f"settings are: {', '.join(fields)}"))
            else:
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(Diagnostic(code, f"{where} setting '{name}': "
                                                 f"{msg[0].lower() + msg[1:]}",
                                           s.value.span if s else None))
        raise SpecError(problems) from None


def resolve_trainable(g: Graph, names: tuple[str, ...], setting: ast.Setting,
                      role_of: dict[str, str]) -> list[str]:
    """Names, roles or `all` to the list of weighted instances they cover."""
    items = setting.value.items if isinstance(setting.value, ast.ListExpr) else [setting.value]
    weighted = [i for i in g.instances.values() if i.role not in ("op",)]
    out: list[str] = []
    problems = []
    for name, item in zip(names, items):
        if name == "all":
            covered = [i.name for i in weighted if not i.frozen]
        elif name in ROLES:
            covered = [i.name for i in weighted
                       if role_of.get(i.name.split(".")[0]) == name and not i.frozen]
        else:
            # A name covers the layers under it, except those declared `frozen` inside it;
            # naming a layer that is itself declared frozen unfreezes it for the stage.
            unfreeze = name in g.meta.get("frozen_decls", ())
            covered = [i.name for i in weighted
                       if (i.name == name or i.name.startswith(name + "."))
                       and (unfreeze or not i.frozen)]
            if not covered and not any(i.name == name or i.name.startswith(name + ".")
                                       for i in weighted):
                declared = sorted({n.split(".")[0] for n in g.instances if not
                                   g.instances[n].anonymous})
                problems.append(Diagnostic(
                    "E503", f"trainable lists '{name}', but the model has no layer of that name",
                    item.span, hint=did_you_mean(name, declared + ["all", *ROLES]) or
                    f"layers are: {', '.join(declared)}; or a role, or all"))
                continue
        out.extend(c for c in covered if c not in out)
    if problems:
        raise SpecError(problems)
    return out


def run(c: Compilation) -> None:
    g = c.graph
    node: ast.Train | None = g.meta.get("train_ast")
    if node is None:
        return
    try:
        settings, _ = validate_settings(TrainSettings, node.settings, c.consts, "E501", "train")
    except SpecError as exc:
        c.sink.add(exc)
        settings = None
    role_of = {s.name.name: s.role for s in c.model.body if isinstance(s, ast.Instance)}
    stages: list[Stage] = []
    seen: dict[str, ast.Stage] = {}
    for st in node.stages:
        if st.name.name in seen:
            c.sink.add(error("E502", f"stage '{st.name.name}' is defined twice", st.name.span))
            continue
        seen[st.name.name] = st
        try:
            ss, spans = validate_settings(StageSettings, st.settings, c.consts, "E502",
                                          f"stage '{st.name.name}'")
            trainable = [i.name for i in g.instances.values() if i.trainable and i.role != "op"]
            if ss.trainable is not None:
                trainable = resolve_trainable(g, ss.trainable, spans["trainable"], role_of)
            for loss in ss.losses or ():
                if loss not in g.losses:
                    s = spans["losses"]
                    raise error("E502", f"stage '{st.name.name}' uses loss '{loss}', which the "
                                        "model does not define", s.value.span,
                                hint=did_you_mean(loss, g.losses) or
                                f"losses are: {', '.join(g.losses) or 'none'}")
            if ss.epochs is not None and ss.steps is not None:
                raise error("E502", f"stage '{st.name.name}' sets both epochs and steps",
                            spans["steps"].span, hint="give one of them")
            data = {k: v for k, v in ss.model_dump().items() if v is not None}
            stages.append(Stage(st.name.name, data, trainable, st.span))
        except SpecError as exc:
            c.sink.add(exc)
    if settings is not None:
        if settings.epochs is not None and settings.steps is not None:
            c.sink.add(error("E501", "train sets both epochs and steps", node.span,
                             hint="give one of them"))
        g.train = TrainPlan(settings.model_dump(), stages, node.span)
