"""Pass `trainability`: the `train` block and what each stage trains.

Settings are validated against `TrainSettings`/`StageSettings`; a stage's `trainable` list
names layers (a block or repeat name covers everything inside it), roles (`encoder`, ...)
or `all`. Layers declared `frozen` stay frozen unless a stage names them (or the frozen
declaration that contains them) explicitly. The result is each stage's list of trainable
instances, which the trainer uses as is.
"""

from __future__ import annotations

from mmgraph.components import registry
from mmgraph.ir import schema
from mmgraph.ir.graph import Graph, Instance, Stage, TrainPlan
from mmgraph.ir.passes.base import Compilation
from mmgraph.ir.schema import Codes, validate
from mmgraph.ir.settings import StageSettings, TrainSettings
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, Note, SpecError, error
from mmgraph.suggest import did_you_mean

ROLES = ("encoder", "connector", "fusion", "decoder", "head", "layer")


TRAIN = Codes("E501", "E501", "E501", "E501")
STAGE = Codes("E502", "E502", "E502", "E502")


def weighted(g: Graph) -> list[Instance]:
    """The instances that have parameters to train (not ops, not weightless losses)."""
    return [i for i in g.instances.values() if registry.get(i.component).has_weights]


def trains_by_default(inst: Instance) -> bool:
    """Not frozen, or frozen with LoRA adapters (which then train while the base stays)."""
    return not inst.frozen or inst.lora is not None


def resolve_trainable(g: Graph, names: tuple[str, ...], value: ast.Expr,
                      role_of: dict[str, str]) -> list[str]:
    """Names, roles or `all` to the list of weighted instances they cover."""
    items = value.items if isinstance(value, ast.ListExpr) else [value]
    layers = weighted(g)
    out: list[str] = []
    problems = []
    for name, item in zip(names, items):
        if name == "all":
            covered = [i.name for i in layers if trains_by_default(i)]
        elif name in ROLES:
            covered = [i.name for i in layers
                       if role_of.get(i.name.split(".")[0]) == name and trains_by_default(i)]
        else:
            # A name covers the layers under it that train by default, plus those frozen by
            # this very declaration: naming a frozen layer unfreezes it for the stage, while
            # layers declared frozen inside it stay frozen.
            under = [i for i in layers if i.name == name or i.name.startswith(name + ".")]
            covered = [i.name for i in under
                       if trains_by_default(i) or i.frozen_by == name]
            teacher = next((i for i in under if i.ema_of), None)
            if teacher is not None:  # its weights are the average of another layer's
                problems.append(Diagnostic(
                    "E503", f"trainable lists '{name}', a moving average of "
                            f"'{teacher.ema_of}' (ema_of), which the optimizer never steps",
                    item.span, hint=f"train '{teacher.ema_of}'; '{name}' follows it"))
                continue
            if not under and name in g.instances:
                problems.append(Diagnostic(
                    "E503", f"trainable lists '{name}', which has no weights to train",
                    item.span, hint=f"{g.instances[name].component} has no parameters; "
                                    "remove it from the list"))
                continue
            if not under:
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
    g.trainable_by_default = [i.name for i in weighted(g) if trains_by_default(i)]
    node = next((s for s in c.model.body if isinstance(s, ast.Train)), None)
    if node is None:
        return
    try:
        settings, _ = validate(TrainSettings, schema.settings(node.settings), c.consts, "train",
                               TRAIN, node.span, symbols=True)
    except SpecError as exc:
        c.sink.add(exc)
        settings = None
    role_of = {s.name.name: s.role for s in c.model.body if isinstance(s, ast.Instance)}
    stages: list[Stage] = []
    seen: dict[str, ast.Stage] = {}
    for st in node.stages:
        if st.name.name in seen:
            c.sink.add(error("E502", f"stage '{st.name.name}' is defined twice", st.name.span,
                             notes=(Note(seen[st.name.name].name.span, "first defined here"),)))
            continue
        seen[st.name.name] = st
        try:
            ss, given = validate(StageSettings, schema.settings(st.settings), c.consts,
                                 f"stage '{st.name.name}'", STAGE, st.span, symbols=True)
            trainable = list(g.trainable_by_default)
            if ss.trainable is not None:
                trainable = resolve_trainable(g, ss.trainable, given["trainable"][1], role_of)
            value = given["losses"][1] if "losses" in given else None
            items = value.items if isinstance(value, ast.ListExpr) else [value]
            for loss, item in zip(ss.losses or (), items):
                if loss not in g.losses:
                    raise error("E502", f"stage '{st.name.name}' uses loss '{loss}', which the "
                                        "model does not define", item.span,
                                hint=did_you_mean(loss, g.losses) or
                                f"losses are: {', '.join(g.losses) or 'none'}")
            if ss.epochs is not None and ss.steps is not None:
                raise error("E502", f"stage '{st.name.name}' sets both epochs and steps",
                            given["steps"][0].span, hint="give one of them")
            data = {k: v for k, v in ss.model_dump().items() if v is not None}
            stages.append(Stage(st.name.name, data, trainable, st.span))
        except SpecError as exc:
            c.sink.add(exc)
    if settings is not None:
        if settings.epochs is not None and settings.steps is not None:
            c.sink.add(error("E501", "train sets both epochs and steps", node.span,
                             hint="give one of them"))
        g.train = TrainPlan(settings.model_dump(), stages, node.span)
