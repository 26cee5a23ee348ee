"""Data for `mmgraph train`: sources of raw examples, and the adapter to a spec's inputs.

A *source* is a sequence of examples; an example is a dict of raw fields ("image": a PIL
image or an HxW / HxWxC / CxHxW array, "text": str, "label": int, "audio": a 1-D float
array, anything else). `open_source` picks one of the built-ins:

- `digits`: scikit-learn's bundled handwritten digits (real data, no download), the default;
- `PATH.jsonl`: one JSON object per line, file paths relative to the .jsonl file;
- `DIR/`: an image folder, one sub-folder per class.

`SpecDataset` turns examples into the tensors a spec's inputs expect (by name, then by kind),
and `batches` walks it in a seeded order that can resume at any batch.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch
import torch.nn.functional as F

from mmgraph.backends.torch.inputs import TORCH_DTYPES
from mmgraph.errors import UserError
from mmgraph.ir.graph import Graph
from mmgraph.ir.types import TensorType
from mmgraph.suggest import did_you_mean


class DataError(UserError):
    """A problem with the data, worded for people: the CLI prints it without a traceback."""


# ------------------------------------------------------------------------------ sources
class Source:
    """A sequence of raw examples with a name and the field names it offers."""

    name: str = "source"
    fields: list[str] = []
    classes: list[str] | None = None
    skipped: int = 0  # bad examples left out at open time (skip_bad=True)
    problems: list[str] = []  # why they were left out

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def where(self, i: int) -> str:
        """Where example i comes from, for error messages."""
        return f"{self.name}[{i}]"

    def raw(self, i: int) -> dict[str, Any]:
        """Example i without decoding its files (those are _FileRefs): cheap to check."""
        return self[i]


class ListSource(Source):
    """Examples held in memory (tests, notebooks)."""

    def __init__(self, examples: Sequence[dict[str, Any]], name: str = "examples"):
        self.examples = list(examples)
        self.name = name
        self.fields = _union_keys(self.examples)
        self.skipped, self.problems = 0, []

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.examples[i])


def _union_keys(examples) -> list[str]:
    seen: dict[str, None] = {}
    for ex in examples:
        for k in ex:
            seen.setdefault(k, None)
    return list(seen)


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Caption templates; the one used is fixed by the example's index, so data is reproducible.
DIGIT_TEMPLATES = ("a photo of the digit {name}", "a handwritten {numeral}",
                   "the number {name}", "an image of the digit {numeral}",
                   "a picture of a handwritten {name}")
ZERO_SHOT_TEMPLATE = DIGIT_TEMPLATES[0]


def digits_caption(index: int, label: int) -> str:
    template = DIGIT_TEMPLATES[index % len(DIGIT_TEMPLATES)]
    return template.format(name=DIGIT_NAMES[label], numeral=label)


def digits_class_prompts() -> list[str]:
    """One prompt per class 0..9, the way zero-shot evaluation phrases them."""
    return [ZERO_SHOT_TEMPLATE.format(name=n, numeral=i) for i, n in enumerate(DIGIT_NAMES)]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)  # 0..16 -> 0..1
    order = np.random.default_rng(0).permutation(len(images))
    return images, d.target.astype(np.int64), order


class DigitsSource(Source):
    """scikit-learn's 1,797 8x8 handwritten digits: a real data set that needs no download.

    Split: a permutation seeded with 0, first 80% train, last 20% test. The caption of an
    example is fixed by its index in the full set, so both splits are reproducible.
    """

    name = "digits"
    fields = ["image", "text", "label"]
    classes = list(DIGIT_NAMES)

    def __init__(self, split: str = "train"):
        if split not in ("train", "test"):
            raise DataError(f"dataset digits has splits 'train' and 'test', not {split!r}")
        self.images, self.labels, order = _digits_arrays()
        cut = int(0.8 * len(order))
        self.index = order[:cut] if split == "train" else order[cut:]
        self.split = split
        self.skipped, self.problems = 0, []

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.index[i])
        label = int(self.labels[j])
        return {"image": self.images[j], "text": digits_caption(j, label), "label": label}

    def where(self, i: int) -> str:
        return f"digits/{self.split}[{i}]"


def _open_image(path: Path):
    """The decoded image at path (loaded now, so a broken file fails here)."""
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        return im.copy()


def _verify_image(path: Path) -> str | None:
    """Why the file is not a readable image, or None when it is."""
    from PIL import Image
    if not path.is_file():
        return "is not a regular file" if path.exists() else "not found"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:
        return f"cannot be decoded ({exc})"
    return None


def _verify_audio(path: Path) -> str | None:
    if path.suffix.lower() != ".npy":
        return (f"is a {path.suffix or 'extensionless'} file; only .npy arrays are supported "
                "for audio")
    if not path.is_file():
        return "is not a regular file" if path.exists() else "not found"
    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        return f"cannot be read ({exc})"
    return None


_FILE_FIELDS = {"image": _verify_image, "audio": _verify_audio}
OUTSIDE_HINT = "pass --allow-outside-data to read files outside the data folder"


def _outside(path: Path, folder: Path) -> bool:
    """Whether `path` leaves `folder` (absolute, `..`, or a symbolic link out of it)."""
    return not path.resolve().is_relative_to(folder.resolve())


class JsonlSource(Source):
    """One JSON object per line. "image"/"audio" strings are paths relative to the .jsonl
    file (audio: .npy arrays only); a LLaVA-style "conversations" list becomes "text".
    Everything is checked at open time, so a bad line fails early with its file:line, or,
    with skip_bad, is left out and counted in `skipped` (and len() is exact). Files must lie
    in the .jsonl file's folder unless `allow_outside`."""

    def __init__(self, path: str | Path, skip_bad: bool = False, allow_outside: bool = False):
        self.path = Path(path)
        self.name = str(path)
        self.allow_outside = allow_outside
        self.skipped, self.problems = 0, []
        self.records: list[dict[str, Any]] = []
        self.lines: list[int] = []
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        for lineno, line in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"),
                                      start=1):
            if not line.strip():
                continue
            try:
                self.records.append(self._parse(line, lineno))
                self.lines.append(lineno)
            except DataError as exc:
                if not skip_bad:
                    raise
                self.skipped += 1
                self.problems.append(str(exc))
        if not self.records:
            extra = f" ({self.skipped} bad lines skipped)" if self.skipped else ""
            raise DataError(f"{path}: no usable examples{extra}")
        self.fields = _union_keys(self.records)

    def _parse(self, raw: bytes, lineno: int) -> dict[str, Any]:
        at = f"{self.name}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{at}: not valid UTF-8 (byte {exc.start + 1} of the line: "
                            f"{exc.reason})") from None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{at}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise DataError(f"{at}: JSON nested too deeply to read") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise DataError(f"{at}: unreadable JSON: {exc}") from None
        if not isinstance(record, dict):
            raise DataError(f"{at}: expected a JSON object, got {type(record).__name__}")
        if "conversations" in record:
            turns = record.pop("conversations")
            if not isinstance(turns, list) or not all(
                    isinstance(t, dict) and "value" in t for t in turns):
                raise DataError(f'{at}: "conversations" must be a list of '
                                '{"from": ..., "value": ...} objects')
            record.setdefault("text", "\n".join(f"{t.get('from', 'human')}: {t['value']}"
                                                for t in turns))
        for key, verify in _FILE_FIELDS.items():
            value = record.get(key)
            if isinstance(value, str):
                shown = json.dumps(value, ensure_ascii=False)  # quoted, control characters escaped
                if "\0" in value:
                    raise DataError(f"{at}: {key} path {shown} contains a NUL character")
                file = self.path.parent / value
                if not self.allow_outside and _outside(file, self.path.parent):
                    raise DataError(f"{at}: {key} {shown} is outside the data folder "
                                    f"{self.path.parent}; {OUTSIDE_HINT}")
                why = verify(file)
                if why:
                    raise DataError(f"{at}: {key} {shown} {why}")
                record[key] = _FileRef(file)
        return record

    def raw(self, i: int) -> dict[str, Any]:
        return dict(self.records[i])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = dict(self.records[i])
        for key, value in out.items():
            if isinstance(value, _FileRef):
                try:
                    out[key] = _open_image(value.path) if key == "image" else \
                        np.load(value.path, allow_pickle=False)
                except Exception as exc:
                    raise DataError(f"{self.where(i)}: {key} {str(value.path)!r} cannot be "
                                    f"decoded ({exc})") from None
        return out

    def where(self, i: int) -> str:
        return f"{self.name}:{self.lines[i]}"


class _FileRef:
    """A file path found in a record, decoded when the example is read."""

    def __init__(self, path: Path):
        self.path = path

    def __repr__(self) -> str:
        return f"file {str(self.path)!r}"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                  ".ppm", ".pgm")


class ImageFolderSource(Source):
    """DIR/<class>/<image>: sorted class names give the label ids; the caption is
    "a photo of a {class}" with underscores read as spaces."""

    def __init__(self, root: str | Path, skip_bad: bool = False, allow_outside: bool = False):
        self.root = Path(root)
        self.name = str(root)
        self.fields = ["image", "label", "text"]
        self.skipped, self.problems = 0, []
        self.classes = sorted(p.name for p in self.root.iterdir()
                              if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
        self.items: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            for file in sorted((self.root / cls).iterdir()):
                if file.name.startswith(".") or file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                why = (f"is outside the data folder {self.root}; {OUTSIDE_HINT}"
                       if not allow_outside and _outside(file, self.root) else
                       _verify_image(file))
                if why is None:
                    self.items.append((file, label))
                elif skip_bad:
                    self.skipped += 1
                    self.problems.append(f"{file}: {why}")
                else:
                    raise DataError(f"{file}: image {why}")
        if not self.items:
            extra = f" ({self.skipped} bad images skipped)" if self.skipped else ""
            raise DataError(f"{root}: no images found{extra}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        file, label = self.items[i]
        try:
            image = _open_image(file)
        except Exception as exc:
            raise DataError(f"{file}: image cannot be decoded ({exc})") from None
        return {**self.raw(i), "image": image}

    def raw(self, i: int) -> dict[str, Any]:
        file, label = self.items[i]
        text = f"a photo of a {self.classes[label].replace('_', ' ')}"
        return {"image": _FileRef(file), "label": label, "text": text}

    def where(self, i: int) -> str:
        return str(self.items[i][0])


def open_source(name_or_path: str, split: str = "train", skip_bad: bool = False,
                allow_outside: bool = False) -> Source:
    """The source called `name_or_path`: "digits", a .jsonl file, or an image folder.

    Splits: digits has a fixed train/test split. A .jsonl path `data/x.jsonl` reads
    `data/x.<split>.jsonl` when that file exists, else `data/x.jsonl` for every split. An image
    folder `DIR` reads `DIR/<split>` when that folder exists, else `DIR` for every split.
    """
    if name_or_path == "digits":
        return DigitsSource(split)
    path = Path(name_or_path)
    if path.suffix == ".jsonl":
        per_split = path.with_name(f"{path.stem}.{split}.jsonl")
        if per_split.is_file():
            return JsonlSource(per_split, skip_bad, allow_outside)
        if not path.is_file():
            raise DataError(f"dataset file {name_or_path} " +
                            ("is not a regular file" if path.exists() else "not found"))
        return JsonlSource(path, skip_bad, allow_outside)
    if path.is_dir():
        sub = path / split
        return ImageFolderSource(sub if sub.is_dir() else path, skip_bad, allow_outside)
    hint = did_you_mean(name_or_path, ["digits"])
    raise DataError(f"unknown dataset {name_or_path!r}: expected 'digits', a .jsonl file or "
                    f"an image folder" + (f"; {hint}" if hint else ""))


# ------------------------------------------------------------------------------ adapter
# Which field feeds an input of each kind when no field has the input's own name.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "Image": ("image",), "Tokens": ("text", "caption", "prompt"), "Labels": ("label",),
    "Audio": ("audio",), "Mel": ("audio",), "Mask": ("mask",),
}
MEAN, STD = 0.5, 0.5  # images: 0..1 -> -1..1


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
            if kind not in ("Labels", "Tokens") or isinstance(value, _FileRef):
                continue
            if isinstance(value, str) and kind == "Tokens":
                self._check_tokenizer(name)
                continue
            try:
                ids = self._convert(self.graph.nodes[name].type, self.shapes[name], value)
            except _Mismatch as exc:
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
                tensor = self._convert(t, self.shapes[name], value)
            except _Mismatch as exc:
                raise DataError(f"{self.source.where(j)}: {self._label(name)} cannot take field "
                                f"{field!r} ({_describe(value)}): {exc}") from None
            out[name] = tensor.to(TORCH_DTYPES[t.dtype])
        return out

    def _convert(self, t: TensorType, shape: list[int | None], value: Any) -> torch.Tensor:
        if t.kind == "Image":
            return _image(value, *shape)
        if t.kind == "Tokens":
            return _tokens(value, shape[0], self.tokenizer)
        if t.kind == "Labels":
            return _labels(value, shape)
        if t.kind == "Audio":
            return _pad_to(_wave(value), shape[0])
        if t.kind == "Mel":
            return _mel(value, shape[0], shape[1])
        if t.kind == "Mask":
            return _fixed(value, shape, "a boolean per token").bool()
        return _fixed(value, shape, f"a {t.kind} value")


class _Mismatch(Exception):
    """A value that does not fit an input; SpecDataset adds which input and field."""


def _array(value: Any, wanted: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise _Mismatch(f"expected {wanted}")
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception:
        raise _Mismatch(f"expected {wanted}") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise _Mismatch(f"expected {wanted}")
    return arr


def _image(value: Any, c: int, h: int, w: int) -> torch.Tensor:
    """Any image as C x H x W floats in [-1, 1]: channels matched, resized bilinearly."""
    wanted = "a PIL image or an HxW / HxWxC / CxHxW array"
    if hasattr(value, "convert") and hasattr(value, "mode"):  # PIL
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
        if mode is None:
            raise _Mismatch(f"a picture has 1, 3 or 4 channels, the input wants {c}")
        arr = np.asarray(value.convert(mode), dtype=np.float32) / 255.0
    else:
        arr = _array(value, wanted)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        x = torch.from_numpy(np.ascontiguousarray(arr))[None]
    elif arr.ndim == 3:
        chw = arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4)
        if not chw and arr.shape[-1] not in (1, 3, 4):
            raise _Mismatch(f"expected {wanted} with 1, 3 or 4 channels")
        x = torch.from_numpy(np.ascontiguousarray(arr if chw else arr.transpose(2, 0, 1)))
    else:
        raise _Mismatch(f"expected {wanted}")
    x = _channels(x, c)
    if tuple(x.shape[1:]) != (h, w):
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    return (x.clamp(0, 1) - MEAN) / STD


def _channels(x: torch.Tensor, c: int) -> torch.Tensor:
    have = x.shape[0]
    if have == c:
        return x
    if have == 4:  # drop alpha first
        x, have = x[:3], 3
        if c == 3:
            return x
    if have == 1 and c in (3, 4):
        x = x.expand(3, -1, -1)
        return x if c == 3 else torch.cat([x, torch.ones_like(x[:1])])
    if have == 3 and c == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (x * weights).sum(0, keepdim=True)
    if have == 3 and c == 4:
        return torch.cat([x, torch.ones_like(x[:1])])
    raise _Mismatch(f"the image has {have} channels and the input wants {c}")


def _tokens(value: Any, length: int, tokenizer) -> torch.Tensor:
    if isinstance(value, str):
        return torch.tensor(tokenizer.encode(value, length), dtype=torch.long)
    arr = _array(value, "a string (or a list of token ids)")
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise _Mismatch("expected a string (or a list of token ids)")
    ids = torch.from_numpy(arr.astype(np.int64))[:length]
    return F.pad(ids, (0, length - len(ids)), value=tokenizer.pad_id)


def _labels(value: Any, shape: list[int | None]) -> torch.Tensor:
    wanted = "an integer label" if not shape else f"{shape[0]} integer labels"
    if isinstance(value, bool):
        raise _Mismatch(f"expected {wanted}")
    arr = _array(value, wanted)
    if arr.dtype.kind not in "iu" or arr.ndim != len(shape) or \
            (shape and arr.shape[0] != shape[0]):
        raise _Mismatch(f"expected {wanted}")
    return torch.from_numpy(arr.astype(np.int64)) if shape else torch.tensor(int(arr))


def _fixed(value: Any, shape: list[int | None], wanted: str) -> torch.Tensor:
    """A value used as it is, after checking its shape against the input's."""
    arr = _array(value, wanted)
    ok = arr.ndim == len(shape) and \
        all(s is None or s == n for s, n in zip(shape, arr.shape, strict=True))
    if not ok:
        want = ", ".join("?" if s is None else str(s) for s in shape)
        raise _Mismatch(f"expected shape [{want}] without the batch axis")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _wave(value: Any) -> torch.Tensor:
    arr = _array(value, "a 1-D waveform").astype(np.float32)
    if arr.ndim == 2:  # several channels: average them (the shorter axis is the channels)
        arr = arr.mean(axis=int(np.argmin(arr.shape)))
    if arr.ndim != 1:
        raise _Mismatch("expected a 1-D waveform")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad the last axis to `length`."""
    x = x[..., :length]
    return F.pad(x, (0, length - x.shape[-1]))


SAMPLE_RATE, N_FFT, HOP = 16000, 400, 160  # Whisper's front end: 25 ms windows, 10 ms hop


def _mel(value: Any, mels: int, frames: int) -> torch.Tensor:
    """An M x F log-mel spectrogram: given as one (M x F array), or made from a waveform."""
    arr = _array(value, "a waveform or an M x F spectrogram")
    if arr.ndim == 2 and arr.shape[0] == mels:
        return _pad_to(torch.from_numpy(arr.astype(np.float32)), frames)
    return _pad_to(log_mel(_wave(arr), mels), frames)


def log_mel(wave: torch.Tensor, mels: int) -> torch.Tensor:
    """Log-mel spectrogram (HTK mel scale, 16 kHz, 400-point FFT, hop 160)."""
    if wave.numel() < N_FFT:
        wave = F.pad(wave, (0, N_FFT - wave.numel()))
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT),
                      return_complex=True).abs() ** 2  # (N_FFT//2+1, frames)
    return torch.log(mel_filters(mels) @ spec + 1e-6)


@functools.lru_cache(maxsize=8)
def mel_filters(mels: int) -> torch.Tensor:
    """Triangular filters (mels x N_FFT//2+1) evenly spaced on the HTK mel scale."""
    def to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    hi = to_mel(SAMPLE_RATE / 2)
    points = torch.tensor([700.0 * (10 ** (hi * k / (mels + 1) / 2595.0) - 1)
                           for k in range(mels + 2)])  # back from mel to Hz
    freqs = torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lo, mid, top = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (freqs - lo) / (mid - lo).clamp(min=1e-6)
    falling = (top - freqs) / (top - mid).clamp(min=1e-6)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


# ------------------------------------------------------------------------------ batches
def len_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many batches an epoch of n examples gives."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples into batch tensors (the batch axis first)."""
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of an epoch: a function of (seed, epoch) only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def batches(dataset, batch_size: int, seed: int, epoch: int, start: int = 0,
            drop_last: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of one epoch in a seeded order, from batch `start` on (for exact resume).

    No worker processes: the order and contents depend only on (seed, epoch, start).
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    n = len(dataset)
    order = epoch_order(n, seed, epoch).tolist()
    for b in range(start, len_batches(n, batch_size, drop_last)):
        yield collate([dataset[i] for i in order[b * batch_size:(b + 1) * batch_size]])
