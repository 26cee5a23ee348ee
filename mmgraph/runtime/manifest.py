"""An export folder's `manifest.json`: the one reader every consumer uses, and its checks.

An export folder is input like any other: it may be copied, edited, truncated, or crafted.
`open_folder` reads the manifest through a pydantic model (right types, no missing keys, a
format this mmgraph reads) and `ExportFolder.file` hands out the files it lists only when
they stay inside the folder (no `..`, no absolute path, no link leading out) and match the
size and sha256 recorded at export. Every problem is a `ManifestError` naming the file, the
field or the part, and what to do. It lives with the runtime, the reader that needs nothing
else of mmgraph; `mmgraph export` writes what it defines.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmgraph.errors import UserError

FORMAT = 1  # bump when readers of older manifests would misread a new one
NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # model, part and dim names: identifiers, safe as paths
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
          "uint8", "bool")
MAX_BYTES = 64 << 20  # a manifest is a few kB per part
REEXPORT = "re-export it with `mmgraph export`"


class ManifestError(UserError):
    """An export folder that cannot be used: its manifest.json or a file it lists."""


class _Model(BaseModel):
    # strict: a "1" is not a 1; extra keys are kept for readers that know them
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class DimRange(_Model):
    min: int = Field(ge=1)
    opt: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self


class TensorInfo(_Model):
    name: str = Field(min_length=1)
    dtype: Literal[DTYPES]
    shape: list[int | str]
    kind: str | None = None  # the spec's kind: Tokens, Image, ...
    vocab: int | None = Field(default=None, ge=1)  # token ids run 0..vocab-1


class FileRecord(_Model):
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Part(_Model):
    name: str = Field(pattern=NAME)
    onnx: str
    onnx_fp16: str | None = None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo] = Field(min_length=1)

    @model_validator(mode="after")
    def _files_inside(self):
        for name in self.files():
            path = PurePosixPath(name)
            if not name.isprintable() or "\\" in name or path.is_absolute() \
                    or ".." in path.parts or name in ("", "."):
                raise ValueError(f"part '{self.name}': {name!r} is not a file name inside the "
                                 "export folder (no absolute paths, no '..', no control "
                                 "characters)")
        return self

    def files(self) -> list[str]:
        return [self.onnx] + ([self.onnx_fp16] if self.onnx_fp16 else [])


class Generate(_Model):
    """The `generate` section: the graphs a generation loop runs (mmgraph/export/decoder.py).

    `context` (context inputs -> the values every step reads; it may be one of the parts,
    `reuses_part`) runs once per request, `prefill` once on the prompts, `decode` once per
    new token; `dims` are the ranges of the decoder's own dims (past_len, mask_len, new_len).
    """

    tokens: str = Field(min_length=1)  # the tokens input
    logits: str = Field(min_length=1)
    vocab: int = Field(ge=1)
    max_len: int | None = Field(default=None, ge=1)  # positions the decoder takes at most
    tokens_dim: str  # the export dim a prompt and its new tokens share
    batch_dim: str | int
    prefix: int | None = Field(default=None, ge=0)  # positions before the tokens (visual)
    chat_template: str | None = None  # the spec's train setting, for `generate --chat`
    context_inputs: list[str]
    frontier: list[str]  # the context values the prefill (and decode) graphs take
    self_layers: int = Field(ge=1)
    cross_layers: int = Field(ge=0)
    dims: dict[str, DimRange]
    context: Part | None = None
    prefill: Part
    decode: Part

    def parts(self) -> list[Part]:
        return [p for p in (self.context, self.prefill, self.decode) if p is not None]


class Manifest(_Model):
    format: Literal[FORMAT]
    model: str = Field(pattern=NAME)
    spec: str
    overrides: dict[str, Any] = {}
    lib_dirs: list[str] = []  # the `--lib` folders the spec's imports were read from
    checkpoint: str | None = None
    precision: Literal["fp32", "fp16"]
    opset: int = Field(ge=1)
    dims: dict[str, DimRange]
    parts: list[Part] = Field(min_length=1)
    files: dict[str, FileRecord]
    generate: Generate | None = None  # a model that generates (absent in older folders)
    cannot_generate: str | None = None  # else why not, with its spec line

    @model_validator(mode="after")
    def _consistent(self):
        names = [p.name for p in self.parts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"part '{twice[0]}' appears twice")
        for part in self.parts + (self.generate.parts() if self.generate else []):
            for file in part.files():
                if file not in self.files:
                    raise ValueError(f"part '{part.name}': {file} has no entry in 'files' "
                                     "(its size and sha256)")
        return self


def problems(exc: ValidationError, limit: int = 3) -> str:
    """A pydantic error as `field: what is wrong` phrases, the first few of them."""
    found = []
    for error in exc.errors()[:limit]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        found.append(f"{where.lstrip('.')}: {message}" if where else message)
    more = len(exc.errors()) - limit
    return "; ".join(found) + (f" (and {more} more)" if more > 0 else "")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record(path: Path) -> dict:
    """The `files` entry of a file just written."""
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def inside(folder: Path, name: str, what: str) -> Path:
    """`folder/name` when it is a regular file that stays inside `folder`, links followed.

    `what` says whose file it is in messages ("part 'visual'").
    """
    path = folder / name
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a link loop (RuntimeError before Python 3.13)
        raise ManifestError(f"{path} ({what}) is a loop of links; " + REEXPORT) from None
    if not resolved.is_relative_to(folder.resolve()):
        raise ManifestError(f"{path} ({what}) leads outside the export folder {folder}; "
                            "refusing to read it")
    if not path.exists():
        raise ManifestError(f"{path} ({what}) is missing: the export folder is incomplete; "
                            + REEXPORT)
    if not stat.S_ISREG(resolved.stat().st_mode):
        raise ManifestError(f"{path} ({what}) is not a regular file; " + REEXPORT)
    return path


@dataclass(frozen=True)
class ExportFolder:
    """A validated export folder: its path and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def file(self, name: str, what: str) -> Path:
        """A file of the folder, inside it and, when the manifest records it, unchanged."""
        path = inside(self.path, name, what)
        recorded = self.manifest.files.get(name)
        if recorded is None:  # e.g. an engine built later by build_engine.sh
            return path
        size = path.stat().st_size
        if size != recorded.bytes:
            raise ManifestError(f"{path} ({what}) has {size} bytes but {self.manifest_path} "
                                f"recorded {recorded.bytes}: truncated or replaced; " + REEXPORT)
        if sha256(path) != recorded.sha256:
            raise ManifestError(f"{path} ({what}) does not match the sha256 recorded in "
                                f"{self.manifest_path}: damaged or changed after export; "
                                + REEXPORT)
        return path


def open_folder(dist: str | Path) -> ExportFolder:
    """Read and validate `dist/manifest.json`."""
    dist = Path(dist)
    path = dist / "manifest.json"
    if not dist.is_dir():
        raise ManifestError(f"{dist}: no such export folder" if not dist.exists() else
                            f"{dist} is a file, not an export folder")
    if not path.exists() and not path.is_symlink():
        raise ManifestError(f"{dist} is not an export folder: it has no manifest.json "
                            f"(write one with `mmgraph export SPEC -o {dist}`)")
    size = inside(dist, "manifest.json", "the manifest").stat().st_size
    if size > MAX_BYTES:
        raise ManifestError(f"{path} has {size} bytes, far more than a manifest; "
                            + REEXPORT)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text; " + REEXPORT) from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); "
                            + REEXPORT) from None
    except RecursionError:
        raise ManifestError(f"{path} nests too deeply to be a manifest; " + REEXPORT) from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{path} holds a JSON {type(doc).__name__}, not an object; "
                            + REEXPORT)
    if doc.get("format") != FORMAT:
        found = f"format {doc['format']!r}" if "format" in doc else "no 'format' field"
        raise ManifestError(f"{path} has {found}; this mmgraph reads format {FORMAT}: "
                            + REEXPORT + " from this version")
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"{path}: {problems(exc)}; " + REEXPORT) from None
    return ExportFolder(dist, manifest)
