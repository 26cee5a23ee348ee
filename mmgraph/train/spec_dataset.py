"""The adapter from a source's examples to a spec's inputs (`SpecDataset`), checked as read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch

from mmgraph.backends.torch.inputs import TORCH_DTYPES
from mmgraph.ir.graph import Graph, Ref
from mmgraph.ir.types import TensorType
from mmgraph.suggest import did_you_mean
from mmgraph.train.chat import ChatError, ChatTemplate, Conversation, parse_conversation
from mmgraph.train.convert import Mismatch, to_tensor
from mmgraph.train.preprocess import image_norms
from mmgraph.train.sources import DataError, FileRef, Source
from mmgraph.train.tokenize import fit

# Which field feeds an input of each kind when no field has the input's own name.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "Image": ("image",), "Tokens": ("text", "caption", "prompt", "conversations"),
    "Labels": ("label",), "Audio": ("audio",), "Mel": ("audio",), "Mask": ("mask",),
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


def id_inputs(graph: Graph, ref: Ref) -> set[str]:
    """The Labels/Tokens inputs whose ids reach `ref` unchanged in kind: the input itself, or
    through ops and blocks whose value is still token ids (mask_tokens, slices, binds)."""
    node = graph.nodes[ref.node]
    if node.op == "input":
        return {ref.node} if node.type.kind in ("Labels", "Tokens") else set()
    t = graph.type_of(ref)
    if t is None or t.kind != "Tokens":
        return set()
    found: set[str] = set()
    for _, r in node.inputs:
        found |= id_inputs(graph, r)
    return found


def id_ranges(graph: Graph) -> dict[str, list[IdRange]]:
    """For each Labels/Tokens input, the ranges of the layers its ids reach: embeddings
    (`vocab`) and classification losses (the logits' last size)."""
    out: dict[str, list[IdRange]] = {}
    for node in graph.nodes.values():
        if node.op != "call":
            continue
        inst = graph.instances[node.target]
        ignore = getattr(inst.params, "ignore_index", None)
        logits = next((r for p, r in node.inputs if p == "logits"), None)
        vocab = getattr(inst.params, "vocab", None)
        for port, ref in node.inputs:
            for name in id_inputs(graph, ref):
                if logits is not None and port in ("labels", "tokens"):
                    classes = graph.type_of(logits).dims[-1]
                    if classes.is_Integer:
                        out.setdefault(name, []).append(IdRange(
                            int(classes), f"loss '{inst.name}' ({int(classes)} classes)",
                            ignore))
                elif port == "tokens" and isinstance(vocab, int) and vocab > 0:
                    out.setdefault(name, []).append(IdRange(
                        vocab, f"'{inst.name}' ({inst.component}, vocab={vocab})"))
    return out


@dataclass(frozen=True)
class LossTargets:
    """A next_token loss whose targets come from a Tokens input, and the Mask input (if any)
    that says which of its tokens count."""

    loss: str
    tokens: str
    mask: str | None


def next_token_targets(graph: Graph) -> list[LossTargets]:
    """Every next_token loss fed a Tokens input directly, with its mask input when that is an
    input of the spec (the data set fills it with the answer / non-padding tokens)."""
    out = []
    for node in graph.nodes.values():
        if node.op != "call" or graph.instances[node.target].component != "next_token":
            continue
        ports = dict(node.inputs)
        tokens, mask = ports.get("tokens"), ports.get("mask")
        if tokens is None or graph.nodes[tokens.node].op != "input":
            continue
        mask_input = mask.node if mask is not None and graph.nodes[mask.node].op == "input" \
            else None
        out.append(LossTargets(graph.instances[node.target].name, tokens.node, mask_input))
    return out


SHOWN = 5  # examples named one by one in a truncation report; the rest are counted


@dataclass
class Cut:
    """The examples whose text was longer than a Tokens input and was cut to its length."""

    input: str
    length: int  # the input's T
    texts: int = 0  # examples with text (tokenized here) for this input
    cut: list[tuple[str, int]] = field(default_factory=list)  # (where, tokens before the cut)
    answerless: list[str] = field(default_factory=list)  # conversations left without answer


class SpecDataset:
    """Examples of a source as the tensors a spec's inputs take (no batch axis).

    Each input gets the field with its own name, else one chosen by its kind (KIND_FIELDS);
    a Mask input given to a next_token loss as its mask, with no field of its own, is filled
    from the loss's Tokens input: its answer tokens for a conversation (see chat.py), its
    tokens without the padding for plain text. The plan is made up front, and every example
    is checked as it is read (its fields, its labels and token ids against the spec's
    classes and vocabularies, its text tokenized to count what is cut), so a spec and a data
    set that do not fit fail before training, naming the example's file:line. With
    `skip_bad`, bad examples are left out instead and listed in `problems`. Text longer than
    its input is cut and counted in `cuts` (`truncation="refuse"`: refused); a conversation
    whose answers are all cut away is left out and counted.
    """

    def __init__(self, source: Source, graph: Graph, tokenizer, dims: dict[str, int] | None = None,
                 skip_bad: bool = False, chat_template: str | None = None,
                 truncation: str | None = None):
        self.source = source
        self.graph = graph
        self.tokenizer = tokenizer
        self.dims = dict(dims or {})
        self.targets = next_token_targets(graph)
        self.derived: dict[str, str] = {}  # Mask input -> the Tokens input whose targets fill it
        self.mapping: dict[str, str] = {}  # input name -> field name
        self.shapes: dict[str, list[int | None]] = {}  # input name -> sizes without batch
        for name in graph.inputs:
            t = graph.nodes[name].type
            fed = next((lt.tokens for lt in self.targets if lt.mask == name), None)
            if fed is not None and name not in source.fields:
                self.derived[name] = fed
                self.mapping[name] = f"<targets of {fed}>"
            else:
                self.mapping[name] = self._field_for(name, t)
            self.shapes[name] = self._shape(name, t)
        # image inputs feeding a pretrained part with a preprocessor_config.json use its
        # mean/std (and must have its size)
        self.norms = image_norms(graph, self.shapes)
        self.ranges = id_ranges(graph)
        self.chat_setting = chat_template
        self._chat = ChatTemplate(chat_template, tokenizer) if chat_template else None
        self.refuse_cuts = truncation == "refuse"
        self.cuts = {name: Cut(name, self.shapes[name][0]) for name in graph.inputs
                     if graph.nodes[name].type.kind == "Tokens"}
        self.problems: list[str] = []
        self.index: list[int] = []  # the source's examples that passed the checks
        self._tokenizer_checked: set[str] = set()  # Tokens inputs whose ranges it fits
        for i in range(len(source)):
            try:
                problem = self._problem(source.raw(i), source.where(i))
            except _Answerless:
                continue
            if problem is None:
                self.index.append(i)
            elif skip_bad:
                self.problems.append(f"{source.where(i)}: {problem}")
            else:
                raise DataError(f"{source.where(i)}: {problem}")
        if self.refuse_cuts:
            for cut in self.cuts.values():
                if cut.cut:
                    raise DataError(f"{self._label(cut.input)}: {self._cut_words(cut)}; raise "
                                    f"its length, or set truncation = \"report\" to cut them "
                                    "(counted, and reported)")
        if not self.index:
            lost = sum(len(c.answerless) for c in self.cuts.values())
            extra = f"; {lost} conversations lost every answer to truncation" if lost else ""
            raise DataError(f"{source.name}: no usable examples ({len(self.problems)} bad ones "
                            f"skipped{extra})")

    # ------------------------------------------------------------ checks
    def _problem(self, example: dict[str, Any], where: str) -> str | None:
        """What makes an example unusable for the spec, or None; files are checked by the
        source and decoded later, text is tokenized (to count what is cut) by a tokenizer
        checked once here."""
        for name, field_name in self.mapping.items():
            if name in self.derived:
                continue
            if field_name not in example:
                return f"the example has no field {field_name!r} for {self._label(name)}"
            value, kind = example[field_name], self.graph.nodes[name].type.kind
            if kind not in ("Labels", "Tokens") or isinstance(value, FileRef):
                continue
            text = _as_text(value) if kind == "Tokens" else None
            if isinstance(text, ValueError):
                return f"field {field_name!r}: {text}"
            if text is not None:
                self._check_tokenizer(name)
                problem = self._check_text(name, text, where)
                if problem:
                    return problem
                continue
            try:
                ids = to_tensor(self.graph.nodes[name].type, self.shapes[name], value,
                                self.tokenizer)
            except Mismatch as exc:
                return (f"{self._label(name)} cannot take field {field_name!r} "
                        f"({_describe(value)}): {exc}")
            for rng in self.ranges.get(name, ()):
                bad = ids[~rng.accepts(ids)]
                if bad.numel():
                    what = "label" if kind == "Labels" else "token id"
                    return (f"{what} {int(bad[0])} in field {field_name!r} is out of range: "
                            f"{rng.what} takes 0..{rng.size - 1}")
        return None

    def _check_text(self, name: str, text, where: str) -> str | None:
        """Tokenize one text to count a cut; a conversation must have answers to learn, and
        a loss learning it must be told which tokens they are (a mask)."""
        learned = [lt for lt in self.targets if lt.tokens == name]
        filled = [lt for lt in learned if lt.mask in self.derived]  # masks made from `name`
        if isinstance(text, Conversation):
            bare = [lt.loss for lt in learned if lt.mask is None]
            if bare:
                raise DataError(
                    f"{where}: {self._label(name)} takes a conversation, but next_token loss "
                    f"'{bare[0]}' has no mask, so it would learn the human turns, the system "
                    f"text and the padding too; declare `input answer: Mask[B, "
                    f"{self.shapes[name][0]}]` and write next_token(logits, {name}, answer, "
                    "...): the data fills it with the answer tokens")
            if filled and not any(role == "assistant" for role, _ in text.turns):
                return "the conversation has no answer (no \"gpt\" turn) to learn"
        try:
            ids, targets = self._encode(text)
        except ChatError as exc:  # this conversation: the template refuses its turns
            return str(exc)
        cut = self.cuts[name]
        cut.texts += 1
        if len(ids) > cut.length:
            cut.cut.append((where, len(ids)))
            # position 0 is never a target: next_token predicts tokens 1..T-1
            if filled and isinstance(text, Conversation) and not any(targets[1:cut.length]):
                cut.answerless.append(where)
                raise _Answerless
        return None

    def _check_tokenizer(self, name: str) -> None:
        """A tokenizer whose ids go past a vocabulary of the spec cannot be used at all."""
        if name in self._tokenizer_checked:
            return
        self._tokenizer_checked.add(name)
        for rng in self.ranges.get(name, ()):
            if self.tokenizer.vocab_size > rng.size:
                raise VocabError(f"tokenizer {self.tokenizer.name} has "
                                 f"{self.tokenizer.vocab_size} ids, but {rng.what} for "
                                 f"{self._label(name)} takes only {rng.size} (0..{rng.size - 1})"
                                 f"; use a smaller tokenizer or a vocab of at least "
                                 f"{self.tokenizer.vocab_size} in the spec")

    # ------------------------------------------------------------ text
    @property
    def chat(self) -> ChatTemplate:
        if self._chat is None:
            self._chat = ChatTemplate(self.chat_setting, self.tokenizer)
        return self._chat

    def _encode(self, text) -> tuple[list[int], list[bool]]:
        """Token ids of a text before the cut, and which of them are targets."""
        if isinstance(text, Conversation):
            enc = self.chat.encode(text)
            return enc.ids, enc.targets
        ids = self.tokenizer.ids(text)
        return ids, [True] * len(ids)

    def _tokens(self, name: str, text) -> tuple[torch.Tensor, torch.Tensor]:
        """A text as the ids a Tokens input takes (cut, padded) and its target mask."""
        length = self.shapes[name][0]
        if isinstance(text, Conversation):
            ids, targets = self._encode(text)
            ids, targets = ids[:length], targets[:length]
            ids = fit(ids, length, self.tokenizer.pad_id)
        else:
            full = self.tokenizer.ids(text)
            ids = self.tokenizer.fit(full, length)
            targets = [True] * min(len(full), length)
        targets = targets + [False] * (length - len(targets))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(targets, dtype=torch.bool)

    def cut_report(self) -> list[str]:
        """One line per Tokens input whose text was cut: how many, which, answers lost."""
        return [f"{self._label(cut.input)}: {self._cut_words(cut)}"
                for cut in self.cuts.values() if cut.cut]

    def _cut_words(self, cut: Cut) -> str:
        shown = ", ".join(f"{w} ({n} tokens)" for w, n in cut.cut[:SHOWN])
        more = f" and {len(cut.cut) - SHOWN} more" if len(cut.cut) > SHOWN else ""
        lost = (f"; {len(cut.answerless)} of them lost every answer and are left out "
                f"({', '.join(cut.answerless[:SHOWN])}"
                f"{' ...' if len(cut.answerless) > SHOWN else ''})" if cut.answerless else "")
        return (f"{len(cut.cut)} of {cut.texts} texts are longer than its {cut.length} tokens "
                f"and were cut: {shown}{more}{lost}")

    def padding_notes(self) -> list[str]:
        """next_token losses without a mask: padding (and any prompt) counts as targets."""
        return [f"next_token loss '{lt.loss}' has no mask, so the padding of '{lt.tokens}' "
                f"counts as targets; declare `input answer: Mask[B, T]` and write "
                f"next_token(logits, {lt.tokens}, answer, ...) to leave it out"
                for lt in self.targets if lt.mask is None and
                self.cuts.get(lt.tokens) is not None and self.cuts[lt.tokens].texts]

    # ------------------------------------------------------------ plan
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

    # ------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.index)

    def raw(self, i: int) -> dict[str, Any]:
        """Example i of this data set as the source holds it, files not decoded."""
        return self.source.raw(self.index[i])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.index[i]
        example = self.source[j]
        out, targets = {}, {}
        for name, field_name in self.mapping.items():
            if name in self.derived:
                continue
            t = self.graph.nodes[name].type
            value = example[field_name]
            text = _as_text(value) if t.kind == "Tokens" else None
            try:
                if text is not None and not isinstance(text, ValueError):
                    tensor, targets[name] = self._tokens(name, text)
                else:
                    tensor = to_tensor(t, self.shapes[name], value, self.tokenizer,
                                       self.norms.get(name))
                    if t.kind == "Tokens":  # given as ids: every one of them is a target
                        given = min(len(np.asarray(value)), self.shapes[name][0])
                        targets[name] = torch.arange(self.shapes[name][0]) < given
            except Mismatch as exc:
                raise DataError(f"{self.source.where(j)}: {self._label(name)} cannot take field "
                                f"{field_name!r} ({_describe(value)}): {exc}") from None
            out[name] = tensor.to(TORCH_DTYPES[t.dtype])
        for name, tokens in self.derived.items():
            out[name] = targets[tokens].to(TORCH_DTYPES[self.graph.nodes[name].type.dtype])
        return out


class VocabError(DataError):
    """A tokenizer with more ids than a vocabulary of the spec takes."""


class _Answerless(Exception):
    """A conversation whose answers were all cut off: left out, and counted in its Cut."""


def _as_text(value: Any):
    """A string or a conversation (a Conversation, or a raw list of turns) for a Tokens input;
    None for anything else (token ids); a ValueError saying why a list of turns is bad."""
    if isinstance(value, (str, Conversation)):
        return value
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        try:
            return parse_conversation(value)
        except ValueError as exc:
            return exc
    return None


def hold_out(dataset, fraction: float, seed: int):
    """(train, validation) views of a data set: a `fraction` of its examples, chosen by a
    permutation seeded with `seed` (so a resumed run holds out the same ones), validates."""
    from torch.utils.data import Subset

    n = len(dataset)
    k = int(round(n * fraction))
    if not 0 < k < n:
        raise DataError(f"--val {fraction:g} holds out {k} of {n} examples; a validation split "
                        "needs at least one example and must leave one to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[k:])), Subset(dataset, sorted(order[:k]))
