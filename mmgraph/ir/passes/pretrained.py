"""`pretrained(PATH, part="...")`: check a declaration against a Hugging Face folder's config.json.

Torch-free: only `config.json` is read. The mapping tables are data, one TOML file per
architecture family under `mmgraph/components/pretrained/`; their `[config]` section says which
checkpoints the family reads (`match`: model_type, part, the sub-config holding its keys), how
config keys set the component's parameters (`params`), and which parameters the architecture
fixes (`fixed`).

`expand` calls `bind` while it validates a declaration's parameters, since parameters the spec
leaves out (even required ones such as `width`) are filled from the config. Each parameter the
spec gives that disagrees with the checkpoint is an E209 at the parameter's value; an unreadable
folder or config, or a checkpoint no family reads, is an E210 at the PATH or `part`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import tomllib

from mmgraph.ir.consts import evaluate
from mmgraph.ir.graph import Pretrained
from mmgraph.ir.hf_config import read_hf_config
from mmgraph.ir.schema import show
from mmgraph.lang import ast
from mmgraph.lang.diagnostics import Diagnostic, SpecError, error, shorten
from mmgraph.lang.span import Span

TABLES = Path(__file__).resolve().parents[2] / "components" / "pretrained"


@dataclass(frozen=True)
class Family:
    name: str
    component: str
    match: tuple[dict, ...]
    params: dict[str, Any]
    fixed: dict[str, Any]
    requires: dict[str, Any]


@cache
def families() -> dict[str, Family]:
    """Every mapping table, by family name (the file's stem)."""
    out = {}
    for path in sorted(TABLES.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8")).get("config", {})
        if "component" not in data:  # a table with tensor names only
            continue
        out[path.stem] = Family(path.stem, data["component"], tuple(data.get("match", ())),
                                dict(data.get("params", {})), dict(data.get("fixed", {})),
                                dict(data.get("requires", {})))
    return out


@dataclass(frozen=True)
class Bound:
    """What a checkpoint says about one declaration."""

    pretrained: Pretrained
    values: dict[str, tuple[Any, str]]  # parameter -> (value, the config key it comes from)
    fixed: dict[str, Any]
    config_file: str  # as shown in messages


# ---------------------------------------------------------------- the modifier's arguments

def arguments(m: ast.Modifier, consts: dict[str, Any], overrides: dict[str, Any]
              ) -> tuple[Path, Span, str | None, Span | None]:
    """The folder (absolute) and the part, with their spans."""
    if len(m.args) != 1:
        raise error("E206", "pretrained takes one folder and optionally part=\"...\"",
                    m.args[1].span if len(m.args) > 1 else m.span,
                    hint='e.g. pretrained("checkpoints/clip", part="vision_model")')
    part, part_span = None, None
    for kw in m.kwargs:
        if kw.name.name != "part":
            raise error("E206", f"pretrained has no setting '{kw.name.name}'", kw.name.span,
                        hint='its one setting is part="..."')
        part = evaluate(kw.value, consts, what="part")
        part_span = kw.value.span
        if not isinstance(part, str) or not part:
            raise error("E206", f"part must be a non-empty string, got {shorten(show(part))}",
                        part_span, hint='e.g. part="vision_model"')
    expr = m.args[0]
    value = evaluate(expr, consts, what="the checkpoint folder")
    if not isinstance(value, str) or not value:
        raise error("E206", f"pretrained needs a folder as a string, got {shorten(show(value))}",
                    expr.span, hint='e.g. pretrained("checkpoints/clip")')
    folder = Path(value).expanduser()
    if not folder.is_absolute():
        overridden = isinstance(expr, ast.Name) and expr.id in overrides
        base = Path.cwd() if overridden or expr.span.path.startswith("<") else \
            Path(expr.span.path).resolve().parent
        folder = base / folder
    return Path(os.path.normpath(folder)), expr.span, part, part_span


# ---------------------------------------------------------------- config.json

def read_config(folder: Path, span: Span) -> dict:
    """The folder's config.json as a dict; any problem is an E210 at the PATH."""
    def fail(message: str, hint: str | None):
        raise error("E210", message, span, hint=hint)

    return read_hf_config(folder, fail, "checkpoint folder",
                          "PATH is a local folder in Hugging Face layout (config.json and "
                          "*.safetensors), relative to the spec's folder; save one with "
                          "save_pretrained, or point a constant at it with --set")


# ---------------------------------------------------------------- which family

def select(config: dict, part: str | None, component: str, path_span: Span,
           part_span: Span | None, mod_span: Span) -> tuple[Family, dict, str, dict]:
    """The family reading this checkpoint's part as this component, the (sub-)config holding
    its keys, the prefix of those keys in config.json ('' or e.g. 'vision_config.'), and the
    parameters this kind of checkpoint fixes beyond the family's (the match's `fixed`)."""
    model_type = config.get("model_type")
    matches = [(f, m) for f in families().values() for m in f.match
               if m.get("model_type") == model_type]
    if not matches:
        known = sorted({m["model_type"] for f in families().values() for m in f.match})
        what = f"model_type {show(model_type)}" if model_type is not None else "no model_type"
        raise error("E210", f"the checkpoint's config.json has {what}, which no mapping table "
                            "reads", path_span,
                    hint=f"mmgraph reads: {', '.join(known)}")
    of_part = [(f, m) for f, m in matches if m.get("part") == part]
    parts = sorted({m["part"] for _, m in matches if m.get("part")})
    if not of_part:
        if part is None:
            raise error("E210", f"a {model_type} checkpoint holds several parts; say which "
                                "one this layer loads", mod_span,
                        hint=f"add part=\"...\": one of {', '.join(parts)}")
        raise error("E210", f"a {model_type} checkpoint has no part {show(part)}", part_span,
                    hint=f"its parts: {', '.join(parts)}" if parts else
                    "it is read whole: leave part out")
    fitting = [(f, m) for f, m in of_part if f.component == component]
    if not fitting:
        f = of_part[0][0]
        where = f"the {part} of a {model_type} checkpoint" if part else \
            f"a {model_type} checkpoint"
        raise error("E210", f"{where} is a {f.component} ({f.name}), not a {component}",
                    part_span or path_span,
                    hint=f"declare this layer as {f.component}(...)")
    family, m = fitting[0]
    section = m.get("section")
    fixed = dict(m.get("fixed", {}))
    if not section:
        return family, config, "", fixed
    sub = config.get(section)
    if not isinstance(sub, dict):
        raise error("E210", f"the checkpoint's config.json has no {section} object", path_span)
    return family, sub, f"{section}.", fixed


_MISSING = object()


def _lookup(config: dict, key: str) -> Any:
    value: Any = config
    for step in key.split("."):
        if not isinstance(value, dict) or step not in value:
            return _MISSING
        value = value[step]
    return value


def unsupported(family: Family, config: dict, prefix: str, span: Span) -> list[Diagnostic]:
    """An E210 for each `[config.requires]` entry the checkpoint breaks: what the component
    cannot express (`do_layer_norm_before = false`, a head size other than width / heads).
    A key the config leaves out is taken to hold."""
    out = []
    for key, rule in family.requires.items():
        value = _lookup(config, key)
        if value is _MISSING or value is None:
            continue
        if isinstance(rule, dict) and "same_as" in rule:
            expected, what = _lookup(config, rule["same_as"]), f"{prefix}{rule['same_as']}"
        elif isinstance(rule, dict) and "ratio" in rule:
            a, b = (_lookup(config, k) for k in rule["ratio"])
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
            expected = a / b if ok and b else _MISSING
            what = f"{prefix}{rule['ratio'][0]} / {prefix}{rule['ratio'][1]}"
        else:
            expected, what = rule, None
        if expected is _MISSING or _same(value, expected):
            continue
        shown = f"{what} = {shorten(show(expected))}" if what else shorten(show(expected))
        out.append(Diagnostic(
            "E210", f"the checkpoint's {prefix}{key} is {shorten(show(value))}, but "
                    f"{family.component} needs {shown}", span,
            hint=f"mmgraph's {family.component} cannot express this checkpoint; a wrapped "
                 "transformers model can"))
    return out


def values(family: Family, config: dict, prefix: str, span: Span, root: dict | None = None
           ) -> dict[str, tuple[Any, str]]:
    """Each parameter the config sets, with the config key it comes from. A key starting with
    `/` is read from the whole config.json rather than the part's sub-config."""
    root = config if root is None else root

    def lookup(key: str) -> tuple[Any, str]:
        if key.startswith("/"):
            return _lookup(root, key[1:]), key[1:]
        return _lookup(config, key), prefix + key

    out = {}
    problems = unsupported(family, config, prefix, span)
    for param, rule in family.params.items():
        rule = rule if isinstance(rule, dict) else {"key": rule}
        keys = rule["key"] if isinstance(rule["key"], list) else [rule["key"]]
        value, used = _MISSING, lookup(keys[0])[1]
        for key in keys:
            value, label = lookup(key)
            if value is not _MISSING:
                used = label
                break
        if value is _MISSING or value is None:
            if "default_key" in rule:
                value, used = lookup(rule["default_key"])
            elif "default" in rule:
                value = rule["default"]
        if value is _MISSING or value is None:
            continue
        if "times" in rule:  # e.g. Whisper's frames: twice its max_source_positions
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(Diagnostic(
                    "E210", f"the checkpoint's {used} is {shorten(show(value))}, not an "
                            "integer", span))
                continue
            value, used = value * rule["times"], f"{used} * {rule['times']}"
        if "values" in rule:
            mapped = rule["values"].get(value) if isinstance(value, str) else None
            if mapped is None:
                problems.append(Diagnostic(
                    "E210", f"the checkpoint's {used} is {shorten(show(value))}, which "
                            f"{family.component}'s {param} has no counterpart for", span,
                    hint=f"mmgraph reads {used} = "
                         f"{', '.join(show(v) for v in rule['values'])}"))
                continue
            value = mapped
        out[param] = (value, used)
    if problems:
        raise SpecError(problems)
    return out


# ---------------------------------------------------------------- binding a declaration

def bind(m: ast.Modifier, component: str, consts: dict[str, Any],
         overrides: dict[str, Any]) -> Bound:
    """Read the checkpoint a `pretrained(...)` modifier names, for a layer of `component`."""
    folder, path_span, part, part_span = arguments(m, consts, overrides)
    config = read_config(folder, path_span)
    family, sub, prefix, fixed = select(config, part, component, path_span, part_span, m.span)
    read = {k: v for k, v in values(family, sub, prefix, path_span, config).items()
            if k not in fixed}
    return Bound(Pretrained(str(folder), part, family.name, m.span), read,
                 {**family.fixed, **fixed}, f"{folder.name}/config.json")


def literal(value: Any, span: Span) -> ast.Expr:
    """A config value as the expression the spec would have written."""
    if isinstance(value, bool):
        return ast.Name("true" if value else "false", span)
    if isinstance(value, (int, float)):
        return ast.Num(value, span)
    if isinstance(value, str):
        return ast.Str(value, span)
    if isinstance(value, list):
        return ast.ListExpr(tuple(literal(v, span) for v in value), span)
    return ast.Name("none", span)


def fills(bound: Bound, given: set[str], fields: set[str]
          ) -> list[tuple[ast.Ident, ast.Expr]]:
    """`name = value` pairs for the parameters the spec leaves out and the checkpoint sets."""
    span = bound.pretrained.span
    out = []
    for param, value in {**{k: v for k, (v, _) in bound.values.items()}, **bound.fixed}.items():
        if param in fields and param not in given:
            out.append((ast.Ident(param, span), literal(value, span)))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def disagreements(bound: Bound, params: Any, spans: dict[str, Span], what: str
                  ) -> list[Diagnostic]:
    """An E209 for each parameter the spec gives that the checkpoint sets otherwise."""
    out = []
    for param, (value, key) in bound.values.items():
        if param not in spans or not hasattr(params, param):
            continue
        mine = getattr(params, param)
        if not _same(mine, value):
            out.append(Diagnostic(
                "E209", f"{what}: {param} = {shorten(show(mine))} in the spec, but the checkpoint "
                        f"has {key} = {shorten(show(value))} ({bound.config_file})",
                spans[param],
                hint=f"leave {param} out to take it from the checkpoint, or point "
                     "pretrained(...) at a checkpoint of this shape"))
    for param, value in bound.fixed.items():
        if param not in spans or not hasattr(params, param):
            continue
        mine = getattr(params, param)
        if not _same(mine, value):
            out.append(Diagnostic(
                "E209", f"{what}: {param} = {shorten(show(mine))} in the spec, but a "
                        f"{bound.pretrained.family} checkpoint needs {param} = {show(value)}",
                spans[param], hint=f"leave {param} out; the checkpoint's architecture sets it"))
    return out
