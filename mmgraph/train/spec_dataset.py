"""The adapter from a source's examples to a spec's inputs (`SpecDataset`), checked as read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
import torch

from mmgraph.backends.torch.inputs import TORCH_DTYPES
from mmgraph.ir.graph import Graph
from mmgraph.ir.types import TensorType
from mmgraph.suggest import did_you_mean
from mmgraph.train.convert import Mismatch, to_tensor
from mmgraph.train.preprocess import image_norms
from mmgraph.train.sources import DataError, FileRef, Source

# Which field feeds an input of each kind when no field has the input's own name.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "Image": ("image",), "Tokens": ("text", "caption", "prompt"), "Labels": ("label",),
    "Audio": ("audio",), "Mel": ("audio",), "Mask": ("mask",),
}


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)} of {value.dtype}"
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)} of {value.dtype}"
    if hasattr(value, "mode") and hasattr(value, "size"):
        return f"{value.mode} image {value.size[0]}x{value.size[1]}"
    return type(value).__name__


@dataclass(frozen=True)
class IdRange:
    """The ids a layer accepts from a Labels or Tokens input: 0..size-1 (and `ignore`)."""

    size: int
    what: str  # the layer, for messages
    ignore: int | None = None  # a loss's ignore_index

    def accepts(self, ids: torch.Tensor) -> torch.Tensor:
        ok = (ids >= 0) & (ids < self.size)
        return ok | (ids == self.ignore) if self.ignore is not None else ok


def id_ranges(graph: Graph) -> dict[str, list[IdRange]]:
    """For each Labels/Tokens input, the ranges of the layers it feeds directly: embeddings
    (`vocab`) and classification losses (the logits' last size)."""
    out: dict[str, list[IdRange]] = {}
    for node in graph.nodes.values():
        if node.op != "call":
            continue
        inst = graph.instances[node.target]
        for port, ref in node.inputs:
            source = graph.nodes[ref.node]
            if source.op != "input" or source.type.kind not in ("Labels", "Tokens"):
                continue
            ignore = getattr(inst.params, "ignore_index", None)
            logits = next((r for p, r in node.inputs if p == "logits"), None)
            if logits is not None and port in ("labels", "tokens"):
                classes = graph.type_of(logits).dims[-1]
                if classes.is_Integer:
                    out.setdefault(ref.node, []).append(IdRange(
                        int(classes), f"loss '{inst.name}' ({int(classes)} classes)", ignore))
            elif port == "tokens" and getattr(inst.params, "vocab", None):
                vocab = inst.params.vocab
                out.setdefault(ref.node, []).append(IdRange(
                    vocab, f"'{inst.name}' ({inst.component}, vocab={vocab})"))
    return out


class SpecDataset:
    """Examples of a source as the tensors a spec's inputs take (no batch axis).

    Each input gets the field with its own name, else one chosen by its kind (KIND_FIELDS).
    The plan is made up front, and every example is checked as it is read (its fields, its
    labels and token ids against the spec's classes and vocabularies), so a spec and a data
    set that do not fit fail before training, naming the example's file:line. With
    `skip_bad`, bad examples are left out instead and listed in `problems`.
    """

    def __init__(self, source: Source, graph: Graph, tokenizer, dims: dict[str, int] | None = None,
                 skip_bad: bool = False):
        self.source = source
        self.graph = graph
        self.tokenizer = tokenizer
        self.dims = dict(dims or {})
        self.mapping: dict[str, str] = {}  # input name -> field name
        self.shapes: dict[str, list[int | None]] = {}  # input name -> sizes without batch
        for name in graph.inputs:
            t = graph.nodes[name].type
            self.mapping[name] = self._field_for(name, t)
            self.shapes[name] = self._shape(name, t)
        # image inputs feeding a pretrained part with a preprocessor_config.json use its
        # mean/std (and must have its size)
        self.norms = image_norms(graph, self.shapes)
        self.ranges = id_ranges(graph)
        self.problems: list[str] = []
        self.index: list[int] = []  # the source's examples that passed the checks
        self._tokenizer_checked: set[str] = set()  # Tokens inputs whose ranges it fits
        for i in range(len(source)):
            problem = self._problem(source.raw(i))
            if problem is None:
                self.index.append(i)
            elif skip_bad:
                self.problems.append(f"{source.where(i)}: {problem}")
            else:
                raise DataError(f"{source.where(i)}: {problem}")
        if not self.index:
            raise DataError(f"{source.name}: no usable examples ({len(self.problems)} bad ones "
                            "skipped)")

    def _problem(self, example: dict[str, Any]) -> str | None:
        """What makes an example unusable for the spec, or None; files are checked by the
        source and decoded later, text is tokenized later by a tokenizer checked once here."""
        for name, field in self.mapping.items():
            if field not in example:
                return f"the example has no field {field!r} for {self._label(name)}"
            value, kind = example[field], self.graph.nodes[name].type.kind
            if kind not in ("Labels", "Tokens") or isinstance(value, FileRef):
                continue
            if isinstance(value, str) and kind == "Tokens":
                self._check_tokenizer(name)
                continue
            try:
                ids = to_tensor(self.graph.nodes[name].type, self.shapes[name], value,
                                self.tokenizer)
            except Mismatch as exc:
                return (f"{self._label(name)} cannot take field {field!r} "
                        f"({_describe(value)}): {exc}")
            for rng in self.ranges.get(name, ()):
                bad = ids[~rng.accepts(ids)]
                if bad.numel():
                    what = "label" if kind == "Labels" else "token id"
                    return (f"{what} {int(bad[0])} in field {field!r} is out of range: "
                            f"{rng.what} takes 0..{rng.size - 1}")
        return None

    def _check_tokenizer(self, name: str) -> None:
        """A tokenizer whose ids go past a vocabulary of the spec cannot be used at all."""
        if name in self._tokenizer_checked:
            return
        self._tokenizer_checked.add(name)
        for rng in self.ranges.get(name, ()):
            if self.tokenizer.vocab_size > rng.size:
                raise DataError(f"tokenizer {self.tokenizer.name} has {self.tokenizer.vocab_size}"
                                f" ids, but {rng.what} for {self._label(name)} takes only "
                                f"0..{rng.size - 1}; use a smaller tokenizer or a vocab of at "
                                f"least {self.tokenizer.vocab_size} in the spec")

    def _label(self, name: str) -> str:
        return f"spec input '{name}' ({self.graph.nodes[name].type})"

    def _field_for(self, name: str, t: TensorType) -> str:
        fields = list(self.source.fields)
        if name in fields:
            return name
        for f in KIND_FIELDS.get(t.kind, ()):
            if f in fields:
                return f
        hint = did_you_mean(name, fields)
        raise DataError(f"{self._label(name)} has no source in dataset {self.source.name}; "
                        f"its fields are: {', '.join(fields)}" + (f"; {hint}" if hint else ""))

    def _shape(self, name: str, t: TensorType) -> list[int | None]:
        """Sizes of the non-batch axes; None where free and not given in dims."""
        if t.kind == "Scalar":
            raise DataError(f"{self._label(name)}: a Scalar input cannot come from a data set")
        sizes: list[int | None] = []
        for d in t.dims[1:]:
            value = sympy.sympify(d).subs({s: self.dims[str(s)] for s in d.free_symbols
                                           if str(s) in self.dims})
            sizes.append(int(value) if value.is_Integer else None)
        required = {"Image": "CHW", "Tokens": "T", "Audio": "S", "Mel": "MF", "Mask": "N",
                    "Labels": "N"}.get(t.kind, "")
        for axis, size, d in zip(t.axes[1:], sizes, t.dims[1:], strict=True):
            if size is None and axis in required:
                free = ", ".join(sorted(str(s) for s in d.free_symbols if str(s) not in self.dims))
                raise DataError(f"{self._label(name)}: axis {axis} = {d} is not a fixed size; "
                                f"give it with --dims {free}=N" if free else
                                f"{self._label(name)}: axis {axis} = {d} is not an integer")
        return sizes

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, i: int) -> dict[str, Any]:
        """Example i of this data set as the source holds it, files not decoded."""
        return self.source.raw(self.index[i])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.index[i]
        example = self.source[j]
        out = {}
        for name, field in self.mapping.items():
            t = self.graph.nodes[name].type
            value = example[field]
            try:
                tensor = to_tensor(t, self.shapes[name], value, self.tokenizer,
                                   self.norms.get(name))
            except Mismatch as exc:
                raise DataError(f"{self.source.where(j)}: {self._label(name)} cannot take field "
                                f"{field!r} ({_describe(value)}): {exc}") from None
            out[name] = tensor.to(TORCH_DTYPES[t.dtype])
        return out
