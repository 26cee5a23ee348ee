"""Sources of raw examples for `mmgraph train`, each checked as it is opened.

A *source* is a sequence of examples; an example is a dict of raw fields ("image": a PIL
image or an HxW / HxWxC / CxHxW array, "text": str, "label": int, "audio": a 1-D float
array, anything else). `open_source` picks one of the built-ins:

- `digits`: scikit-learn's bundled handwritten digits (real data, no download), the default;
- `PATH.jsonl`: one JSON object per line, file paths relative to the .jsonl file;
- `DIR/`: an image folder, one sub-folder per class.

A bad line or file fails with its file:line (or, with skip_bad, is left out and named), and
files stay inside the data folder unless allowed out.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmgraph.errors import UserError
from mmgraph.suggest import did_you_mean
from mmgraph.train.chat import parse_conversation


class DataError(UserError):
    """A problem with the data, worded for people: the CLI prints it without a traceback."""


class Source:
    """A sequence of raw examples with a name and the field names it offers."""

    name: str = "source"
    fields: list[str] = []
    classes: list[str] | None = None
    skipped: int = 0  # bad examples left out at open time (skip_bad=True)
    problems: list[str] = []  # why they were left out
    split: str | None = None  # the split open_source found (None: a whole file or folder)

    @property
    def origin(self) -> str:
        """What the examples are, for telling one data set from another: the resolved file
        or folder, or a built-in set and its split."""
        return self.name

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def where(self, i: int) -> str:
        """Where example i comes from, for error messages."""
        return f"{self.name}[{i}]"

    def raw(self, i: int) -> dict[str, Any]:
        """Example i without decoding its files (those are FileRefs): cheap to check."""
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

    @property
    def origin(self) -> str:
        return f"digits/{self.split}"


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
    file (audio: .npy arrays only); a LLaVA-style "conversations" list becomes a
    chat.Conversation, also under "text" when the line has no text of its own.
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
            try:
                conversation = parse_conversation(record["conversations"])
            except ValueError as exc:
                raise DataError(f"{at}: {exc}") from None
            record["conversations"] = conversation
            record.setdefault("text", conversation)
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
                record[key] = FileRef(file)
        return record

    def raw(self, i: int) -> dict[str, Any]:
        return dict(self.records[i])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = dict(self.records[i])
        for key, value in out.items():
            if isinstance(value, FileRef):
                try:
                    out[key] = _open_image(value.path) if key == "image" else \
                        np.load(value.path, allow_pickle=False)
                except Exception as exc:
                    raise DataError(f"{self.where(i)}: {key} {str(value.path)!r} cannot be "
                                    f"decoded ({exc})") from None
        return out

    def where(self, i: int) -> str:
        return f"{self.name}:{self.lines[i]}"

    @property
    def origin(self) -> str:
        return str(self.path.resolve())


class FileRef:
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
        return {"image": FileRef(file), "label": label, "text": text}

    def where(self, i: int) -> str:
        return str(self.items[i][0])

    @property
    def origin(self) -> str:
        return str(self.root.resolve())


def open_source(name_or_path: str, split: str = "train", skip_bad: bool = False,
                allow_outside: bool = False) -> Source:
    """The source called `name_or_path`: "digits", a .jsonl file, or an image folder.

    Splits: digits has a fixed train/test split. A .jsonl path `data/x.jsonl` reads
    `data/x.<split>.jsonl` when that file exists, else `data/x.jsonl` for every split. An image
    folder `DIR` reads `DIR/<split>` when that folder exists, else `DIR` for every split. The
    source's `split` says which: the split, or None for the whole file or folder.
    """
    if name_or_path == "digits":
        return DigitsSource(split)
    path = Path(name_or_path)
    if path.suffix == ".jsonl":
        per_split = Path(split_file(name_or_path, split))
        if per_split.is_file():
            source = JsonlSource(per_split, skip_bad, allow_outside)
            source.split = split
            return source
        if not path.is_file():
            raise DataError(f"dataset file {name_or_path} " +
                            ("is not a regular file" if path.exists() else "not found"))
        return JsonlSource(path, skip_bad, allow_outside)
    if path.is_dir():
        sub = Path(split_file(name_or_path, split))
        source = ImageFolderSource(sub if sub.is_dir() else path, skip_bad, allow_outside)
        source.split = split if sub.is_dir() else None
        return source
    hint = did_you_mean(name_or_path, ["digits"])
    raise DataError(f"unknown dataset {name_or_path!r}: expected 'digits', a .jsonl file or "
                    f"an image folder" + (f"; {hint}" if hint else ""))


def split_file(name_or_path: str, split: str) -> str:
    """Where open_source looks for a split of a .jsonl file or an image folder."""
    path = Path(name_or_path)
    if path.suffix == ".jsonl":
        return str(path.with_name(f"{path.stem}.{split}.jsonl"))
    return str(path / split)
