"""Pretrained weights from local Hugging Face folders into a generated model.

Each declaration with `pretrained(PATH, part=...)` (Instance.pretrained, set by check) names a
folder in Hugging Face layout and a mapping family. The family's `[tensors]` table (data:
mmgraph/components/pretrained/<family>.toml) maps the declaration's own parameter names onto
the checkpoint's, with `{i}` for a layer index:

    [tensors]
    roots = ["", "vision_model."]          # where the family's names start inside the part
    ignore = ["pooler.*"]                  # checkpoint tensors mmgraph has no use for
    [tensors.names]
    "blocks.layers.{i}.attn.q.weight" = "encoder.layers.{i}.self_attn.q_proj.weight"
    "cls" = { from = "embeddings.cls_token", reshape = true }
    "head.weight" = { from = "lm_head.weight", tied = "model.embed_tokens.weight" }
    "queries" = { from = "/query_tokens", reshape = true }   # "/": outside the part
    "blocks.layers.{i}.attn.k.bias" = { zeros = true }   # Whisper's keys have no bias
    "layers.{i}.attn.o.bias" = { from = "...o_proj.bias", absent = "zeros" }  # Qwen2 has none

Only safetensors are read (`model.safetensors` or a sharded `model.safetensors.index.json`):
nothing is unpickled. Every missing, unexpected or mis-shaped tensor is named; the tensors
are cast to the model's dtype.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
import torch

from mmgraph.errors import UserError
from mmgraph.ir.graph import Graph, Pretrained

TABLES = Path(__file__).resolve().parents[2] / "components" / "pretrained"
ADAPTERS = {"lora_a", "lora_b"}  # parameters a modifier adds to a pretrained layer
SHOWN = 20  # names listed per kind of problem before "... and N more"


class PretrainedError(UserError):
    """Pretrained weights that cannot be loaded into a declaration, with the reason."""


@dataclass(frozen=True)
class Rule:
    ours: str  # our parameter name inside the declaration, may hold {i}
    theirs: str | None  # the checkpoint's name below the root, may hold {i}; None: zeros
    reshape: bool = False  # same elements, another shape (ViT's [1, 1, D] class token)
    tied: str | None = None  # where the tensor is when the checkpoint ties it away
    zeros_if_absent: bool = False  # a bias some checkpoints of the family have, some not


@dataclass(frozen=True)
class Table:
    family: str
    roots: tuple[str, ...]
    ignore: tuple[str, ...]
    rules: tuple[Rule, ...]
    tied_copies: dict[str, str] = field(default_factory=dict)  # their name -> the one it equals


def table(family: str) -> Table:
    """The family's `[tensors]` table."""
    path = TABLES / f"{family}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in TABLES.glob("*.toml"))
        raise PretrainedError(f"no mapping table for family '{family}' (known: "
                              f"{', '.join(known)})")
    data = tomllib.loads(path.read_text(encoding="utf-8")).get("tensors")
    if not data or "names" not in data:
        raise PretrainedError(f"{path} has no [tensors.names] table")
    rules = []
    for ours, spec in data["names"].items():
        if isinstance(spec, str):
            rules.append(Rule(ours, spec))
        elif spec.get("zeros"):
            rules.append(Rule(ours, None))
        else:
            absent = spec.get("absent")
            if absent not in (None, "zeros"):
                raise PretrainedError(f"{path}: {ours}: absent = {absent!r} (only \"zeros\")")
            rules.append(Rule(ours, spec["from"], bool(spec.get("reshape", False)),
                              spec.get("tied"), absent == "zeros"))
    tied = {r.theirs: r.tied for r in rules if r.tied}
    return Table(family, tuple(data.get("roots", [""])), tuple(data.get("ignore", [])),
                 tuple(rules), tied)


def _regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


def _fill(pattern: str, m: re.Match) -> str:
    return pattern.replace("{i}", m.group("i")) if "{i}" in pattern else pattern


# ---------------------------------------------------------------- the folder's tensors

class Checkpoint:
    """The tensors of a Hugging Face folder, read lazily from safetensors files."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise PretrainedError(f"pretrained folder {self.folder} does not exist")
        single = self.folder / "model.safetensors"
        index = self.folder / "model.safetensors.index.json"
        if single.is_file():
            files = {None: single}
        elif index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            if not isinstance(weight_map, dict):
                raise PretrainedError(f"{index} has no weight_map")
            files = {name: self.folder / f for name, f in weight_map.items()}
            for f in set(files.values()):
                if not f.is_file():
                    raise PretrainedError(f"{index} names {f.name}, which is not in "
                                          f"{self.folder}")
        else:
            pickles = sorted(p.name for p in self.folder.glob("*.bin")) + \
                sorted(p.name for p in self.folder.glob("*.pt*"))
            if pickles:
                raise PretrainedError(
                    f"{self.folder} holds only {', '.join(pickles)}: mmgraph reads safetensors "
                    "only (pickle files can run code when loaded). Convert the folder once, "
                    "e.g. `AutoModel.from_pretrained(dir).save_pretrained(dir, "
                    "safe_serialization=True)`, where you trust its files")
            raise PretrainedError(f"{self.folder} has no model.safetensors or "
                                  "model.safetensors.index.json")
        self.handles = {f: safe_open(str(f), framework="pt") for f in set(files.values())}
        self.where: dict[str, Path] = {}
        for f, h in self.handles.items():
            for key in h.keys():
                self.where[key] = f

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[self.where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self.handles[self.where[name]].get_tensor(name)


def _list(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f", ... and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


# ---------------------------------------------------------------- one declaration

@dataclass
class Report:
    """What loading one declaration did."""

    layer: str
    folder: str
    prefix: str
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)


def _prefix(ckpt: Checkpoint, t: Table, pre: Pretrained) -> str:
    """Where the family's names start: the part, then the first of the table's roots under
    which one of its tensors is found."""
    base = f"{pre.part}." if pre.part else ""
    names = set(ckpt.names())
    anchors = [r.theirs.replace("{i}", "0") for r in t.rules
               if r.theirs and not r.theirs.startswith("/")]
    for root in t.roots:
        if any(base + root + a in names for a in anchors):
            return base + root
    tops = sorted({n.split(".")[0] for n in names})
    where = f"part '{pre.part}'" if pre.part else "the checkpoint"
    raise PretrainedError(f"{pre.path}: {where} holds no tensor of family '{t.family}' "
                          f"(looked for e.g. {base + t.roots[0] + anchors[0]}); the checkpoint's "
                          f"top-level names are: {_list(tops)}")


def load_part(module: torch.nn.Module, layer: str, pre: Pretrained,
              ckpt: Checkpoint | None = None) -> Report:
    """Load one declaration's weights; refuses (naming every tensor) anything missing,
    mis-shaped or unexpected."""
    t = table(pre.family)
    ckpt = ckpt or Checkpoint(pre.path)
    prefix = _prefix(ckpt, t, pre)
    report = Report(layer, str(pre.path), prefix)
    ours = module.state_dict(keep_vars=True)
    theirs = {n[len(prefix):]: n for n in ckpt.names() if n.startswith(prefix)}
    compiled = [(r, _regex(r.ours), _regex(r.theirs)) for r in t.rules if r.theirs]
    zeros = [_regex(r.ours) for r in t.rules if not r.theirs]

    plan: dict[str, tuple[str, Rule]] = {}  # our name -> (their full name, rule)
    zeroed: list[str] = []  # ours that the architecture has and the checkpoint lacks: zeros
    missing, unmapped, misshaped = [], [], []
    for name in ours:
        if name.rsplit(".", 1)[-1] in ADAPTERS:
            continue  # lora(...)'s own weights start as the modifier makes them
        if any(rx.match(name) for rx in zeros):
            zeroed.append(name)
            continue
        for rule, rx, _ in compiled:
            m = rx.match(name)
            if m:
                src = _fill(rule.theirs, m)
                note = ""
                if src not in theirs and rule.tied:
                    # tied away, unless the checkpoint keeps this tensor outside the part
                    elsewhere = [n for n in ckpt.names() if n.endswith(src)]
                    if elsewhere:
                        note = f"; {elsewhere[0]} is outside it, not taken as tied"
                    else:
                        src = _fill(rule.tied, m)
                if src.startswith("/") and src[1:] in ckpt.where:
                    plan[name] = (src[1:], rule)  # outside the part: from the checkpoint's top
                elif src in theirs:
                    plan[name] = (theirs[src], rule)
                elif rule.zeros_if_absent:
                    zeroed.append(name)
                else:
                    where = src[1:] if src.startswith("/") else prefix + src
                    missing.append(f"{where} (for {layer}.{name}{note})")
                break
        else:
            unmapped.append(f"{layer}.{name}")
    used = {full for full, _ in plan.values()}
    unexpected = []
    for short, full in theirs.items():
        if full in used:
            continue
        if any(fnmatch.fnmatchcase(short, pat) for pat in t.ignore):
            report.ignored.append(full)
            continue
        twin = t.tied_copies.get(short)
        if twin is not None and twin in theirs and ckpt.shape(full) == ckpt.shape(theirs[twin]) \
                and torch.equal(ckpt.get(full), ckpt.get(theirs[twin])):
            continue  # a tied copy the spec ties too
        target = next((_fill(r.ours, m) for r, _, rx in compiled if (m := rx.match(short))),
                      None)
        unexpected.append(full + (f" (would be {layer}.{target}, which the spec does not "
                                  "declare)" if target else ""))
    for name, (full, rule) in plan.items():
        want, have = tuple(ours[name].shape), ckpt.shape(full)
        fits = want == have or (rule.reshape and torch.Size(want).numel() ==
                                torch.Size(have).numel())
        if not fits:
            misshaped.append(f"{full} is {list(have)} in the checkpoint but {layer}.{name} is "
                             f"{list(want)}")
    problems = []
    where = f"{layer}: pretrained {pre.path}" + (f" part '{pre.part}'" if pre.part else "") + \
        f" (family {t.family}, at {pre.span.path}:{pre.span.line}:{pre.span.col})"
    if missing:
        problems.append(f"missing from the checkpoint: {_list(missing)}")
    if misshaped:
        problems.append(f"mis-shaped: {_list(misshaped)}")
    if unexpected:
        problems.append(f"unexpected (in the checkpoint, not in the spec): {_list(unexpected)}")
    if unmapped:
        problems.append(f"the {t.family} table maps no checkpoint tensor to: "
                        f"{_list(unmapped)}")
    if problems:
        raise PretrainedError(where + "\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for name, (full, _) in plan.items():
            target = ours[name]
            target.copy_(ckpt.get(full).reshape(target.shape))  # copy_ casts dtype and device
            report.loaded += 1
        for name in zeroed:
            ours[name].zero_()
    if report.ignored:
        warnings.warn(f"{where}: not used by mmgraph: {_list(report.ignored)}", stacklevel=2)
    return report


def load_pretrained(model: torch.nn.Module, g: Graph) -> list[Report]:
    """Every pretrained declaration of the graph into the model (the generated module whose
    submodule of each layer is named as the layer). Folders are opened once each."""
    opened: dict[str, Checkpoint] = {}
    reports = []
    for name, inst in g.instances.items():
        pre = getattr(inst, "pretrained", None)
        if pre is None:
            continue
        if pre.path not in opened:
            opened[pre.path] = Checkpoint(pre.path)
        reports.append(load_part(model.get_submodule(name), name, pre, opened[pre.path]))
    return reports


def has_pretrained(g: Graph) -> bool:
    return any(getattr(i, "pretrained", None) is not None for i in g.instances.values())


_SHA: dict[tuple[str, int, int], str] = {}  # (file, size, mtime) -> sha256, once per process


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        _SHA[key] = h.hexdigest()
    return _SHA[key]


def sources(g: Graph) -> dict[str, dict]:
    """Where each pretrained declaration's weights came from, for a run's record: folder,
    part, family and the sha256 of each weight file (safetensors and their index)."""
    out = {}
    for name, inst in g.instances.items():
        pre = getattr(inst, "pretrained", None)
        if pre is None:
            continue
        folder = Path(pre.path)
        files = sorted(folder.glob("*.safetensors")) + \
            sorted(folder.glob("*.safetensors.index.json"))
        out[name] = {"path": str(folder), "part": pre.part, "family": pre.family,
                     "files": {f.name: _sha256(f) for f in files if f.is_file()}}
    return out
