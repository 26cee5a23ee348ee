"""Tensor types of the IR: a kind with named axes, symbolic dims (sympy), a dtype and modality tags.

`Seq<image,text>[B, 576 + T, 4096]` reads: a token sequence carrying image and text tokens,
batch `B`, length `576 + T`, width 4096. Dims are sympy expressions so that `H / 14` and
`576 + T` stay exact through the whole graph; symbols are positive integers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import sympy

Dim = sympy.Expr

# What a spec may ask for, checked at `mmgraph check` so that no later stage overflows or
# tries to allocate the impossible: one size (a dim, a width, a vocab) fits in int32, as ONNX,
# TensorRT and CUDA kernels index; one value holds at most 2**40 numbers with every free dim
# at 1; one layer's largest weight matrix (estimated as its two largest sizes multiplied)
# holds at most 2**40 numbers.
MAX_SIZE = 2**31 - 1
MAX_ELEMENTS = 2**40
MAX_WEIGHTS = 2**40


@dataclass(frozen=True)
class Kind:
    """A kind of tensor: its axes by name, its default dtype and the modality it carries."""

    name: str
    axes: tuple[tuple[str, ...], ...]  # allowed axis layouts; () means any rank (Tensor)
    dtype: str
    modality: str | None
    doc: str

    def layout(self, rank: int) -> tuple[str, ...] | None:
        for axes in self.axes:
            if len(axes) == rank:
                return axes
        return None

    def describe(self) -> str:
        return " or ".join(f"{self.name}[{', '.join(a)}]" for a in self.axes) or \
            f"{self.name}[...]"


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("Image", (("B", "C", "H", "W"),), "f32", "image", "images, channels first"),
    Kind("Video", (("B", "F", "C", "H", "W"),), "f32", "video", "clips of F frames"),
    Kind("Audio", (("B", "S"),), "f32", "audio", "raw waveforms of S samples"),
    Kind("Mel", (("B", "M", "F"),), "f32", "audio", "log-mel spectrograms: M bins, F frames"),
    Kind("Tokens", (("B", "T"),), "i64", "text", "token ids"),
    Kind("Seq", (("B", "N", "D"),), "f32", None, "token embeddings of width D"),
    Kind("Vec", (("B", "D"),), "f32", None, "one vector per example"),
    Kind("Mask", (("B", "N"),), "bool", None, "a boolean per token (true = keep/attend)"),
    Kind("Logits", (("B", "N", "V"), ("B", "V")), "f32", None,
         "scores over V classes, per token or per example"),
    Kind("Boxes", (("B", "N", "4"),), "f32", "regions", "boxes as (x0, y0, x1, y1)"),
    Kind("Points", (("B", "N", "C"),), "f32", "points", "point clouds with C features"),
    Kind("Labels", (("B",), ("B", "N")), "i64", None, "integer targets"),
    Kind("Scalar", ((),), "f32", None, "a single number (losses)"),
    Kind("Tensor", (), "f32", None, "any other tensor"),
]}

DTYPES = ("f32", "f16", "bf16", "f64", "i64", "i32", "i16", "i8", "u8", "bool")
DTYPE_ALIASES = {"fp32": "f32", "float32": "f32", "float": "f32", "fp16": "f16",
                 "float16": "f16", "half": "f16", "bfloat16": "bf16", "fp64": "f64",
                 "float64": "f64", "double": "f64", "int64": "i64", "long": "i64",
                 "int32": "i32", "int": "i32", "int16": "i16", "int8": "i8", "uint8": "u8"}
FLOAT_DTYPES = ("f32", "f16", "bf16", "f64")
# Modality tags mmgraph knows; others are allowed (a warning suggests a close known one).
MODALITIES = ("image", "video", "audio", "text", "points", "regions", "depth", "semantic",
              "time_series", "tabular", "graph", "skeleton", "sar", "fmri", "latent",
              "prompt", "speech", "infrared", "xray", "thermal", "imu", "molecule")


@dataclass(frozen=True)
class TensorType:
    kind: str
    dims: tuple[Dim, ...]
    dtype: str
    tags: frozenset[str] = frozenset()
    # The token layout of a sequence built by concat: ((modality, length), ...) in order.
    # Modality-routed layers need it; anything that changes the token axis drops it.
    segments: tuple[tuple[str, Dim], ...] | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "dims", tuple(sympy.sympify(d) for d in self.dims))

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def axes(self) -> tuple[str, ...]:
        layout = KINDS[self.kind].layout(self.rank)
        return layout if layout else tuple(f"d{i}" for i in range(self.rank))

    def dim(self, axis: str | int) -> Dim:
        return self.dims[axis if isinstance(axis, int) else self.axes.index(axis)]

    @property
    def width(self) -> Dim:
        """The last axis: embedding width for Seq/Vec, class count for Logits."""
        return self.dims[-1]

    def with_(self, **changes) -> TensorType:
        if "dims" in changes and self.segments is not None and "segments" not in changes:
            new = changes["dims"]
            if len(new) != self.rank or not same_dim(sympy.sympify(new[1]), self.dims[1]):
                changes["segments"] = None
        return replace(self, **changes)

    def __str__(self) -> str:
        inside = sorted(self.tags)
        if self.dtype != KINDS[self.kind].dtype:
            inside.append(self.dtype)
        tag = f"<{','.join(inside)}>" if inside else ""
        return f"{self.kind}{tag}[{', '.join(format_dim(d) for d in self.dims)}]"

    def to_json(self) -> dict:
        return {"kind": self.kind, "dims": [format_dim(d) for d in self.dims],
                "dtype": self.dtype, "tags": sorted(self.tags)}


def make(kind: str, dims: Iterable, dtype: str | None = None,
         tags: Iterable[str] | None = None) -> TensorType:
    """A type of `kind` with the kind's default dtype and modality unless given."""
    k = KINDS[kind]
    if tags is None:
        tags = [k.modality] if k.modality else []
    return TensorType(kind, tuple(dims), dtype or k.dtype, frozenset(tags))


SCALAR = make("Scalar", ())


def format_dim(d: Dim) -> str:
    """Dims print the way people write them: `576 + T`, `H/14`."""
    if d.is_Integer:
        return str(int(d))
    if isinstance(d, sympy.Add):
        const = [a for a in d.args if a.is_Number]
        rest = [a for a in d.args if not a.is_Number]
        text = " + ".join(sorted(format_dim(a) for a in rest))
        for c in const:
            text = f"{c} + {text}" if c > 0 else f"{text} - {-c}"
        return text
    return str(d).replace("*", " * ").replace(" *  * ", "**")


def sym(name: str) -> sympy.Symbol:
    """The symbol for a free dim name: a positive integer."""
    return sympy.Symbol(name, integer=True, positive=True)


def same_dim(a: Dim, b: Dim) -> bool:
    """True when a and b are provably equal."""
    if a == b:
        return True
    try:
        return sympy.expand(a - b) == 0
    except (TypeError, ValueError):
        return False


def differ(a: Dim, b: Dim) -> bool:
    """True when a and b provably differ (two different numbers, or a non-zero difference)."""
    diff = sympy.expand(a - b)
    return diff.is_number and diff != 0


def is_integral(d: Dim) -> bool:
    """False when d is certainly not an integer (e.g. 225/14)."""
    return d.is_integer is not False and not (d.is_number and not d.is_Integer)


def smallest(d: Dim) -> int | None:
    """The dim with every free symbol at 1 (its smallest value), or None if not a number."""
    value = d.subs({s: 1 for s in d.free_symbols}) if d.free_symbols else d
    return int(value) if value.is_number and value.is_finite else None


def oversize(t: TensorType) -> str | None:
    """Why a value of type `t` cannot be allocated, or None when it can."""
    numel = 1
    for d in t.dims:
        n = smallest(d)
        if n is None:
            continue
        if n > MAX_SIZE:
            return f"its dim {format_dim(d)} is larger than {MAX_SIZE:,} (2**31 - 1)"
        numel *= n
    if numel > MAX_ELEMENTS:
        return f"it holds {numel:,} numbers even with every free dim at 1, more than 2**40"
    return None


def broadcast_plan(a: TensorType, b: TensorType) -> tuple[int, str | None]:
    """How two values of different ranks combine: (which operand is the smaller, 0 or 1, and
    how it is expanded). "tokens": a `Vec[B, D]` repeated over a `Seq[B, N, D]`'s tokens;
    "trailing": a value whose dims are the other's leading ones (a per-example `Tensor[B]`
    gate, a per-token `Tensor[B, N]`) with size-1 axes appended. None when they do not
    broadcast: a rank-0 `Scalar` (a loss) never spreads over a tensor."""
    small, big, which = (a, b, 0) if a.rank < b.rank else (b, a, 1)
    if small.rank == 0:
        return which, None
    if small.kind == "Vec" and big.kind == "Seq":
        same = not differ(small.dims[0], big.dims[0]) and not differ(small.dims[1],
                                                                     big.dims[2])
        return which, "tokens" if same else None
    if small.kind == "Tensor" and all(
            not differ(d, e) for d, e in zip(small.dims, big.dims)):
        return which, "trailing"
    return which, None
