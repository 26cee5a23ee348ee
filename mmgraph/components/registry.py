"""The component registry: one class per component, built-in or plugin.

A component is a Python class with
1. `Params`, a pydantic model: the parameters, their defaults (the only place defaults are
   written), ranges and enums (bad values become E202-E204 diagnostics pointing at the
   offending argument);
2. `infer`, its type rule: input types to output types, with shape arithmetic. It reports
   mistakes through `RuleContext`, whose messages name both sides;
3. `torch`, its torch face, named as "module:attribute" so that checking a spec never imports
   torch (a plugin may give the object itself), and `torch_args`/`torch_call_args`, the
   arguments the face is built and called with.

Users add components with an explicit plugin (`--plugin file.py` or the `mmgraph.components`
entry point group), never from inside a spec.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from mmgraph.ir import types as T
from mmgraph.ir.types import TensorType


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Params(BaseModel):
    """Base for component parameter schemas: unknown names are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Port:
    name: str
    optional: bool = False
    variadic: bool = False  # takes all remaining positional arguments (concat)


class TypeRuleError(Exception):
    """A component's type rule rejecting its inputs; the checker adds the span: the input
    `port`'s argument, or the declaration's `param` argument for a bad parameter."""

    def __init__(self, message: str, port: str | None = None, hint: str | None = None,
                 code: str = "E301", param: str | None = None):
        super().__init__(message)
        self.message, self.port, self.hint, self.code = message, port, hint, code
        self.param = param


class RuleContext:
    """What a type rule knows of its call site: its own name and where each input came from."""

    def __init__(self, name: str, sources: dict[str, str], folder: str | None = None):
        self.name = name
        self.sources = sources
        self.folder = folder  # the folder of the spec declaring the layer (None: the cwd)

    def resolve(self, path: str) -> Path:
        """A path parameter as an absolute path: relative to the declaring spec's folder."""
        p = Path(path).expanduser()
        if not p.is_absolute():
            p = Path(self.folder or Path.cwd()) / p
        return Path(os.path.normpath(p))

    def source(self, port: str) -> str:
        return self.sources.get(port, port)

    def fail(self, message: str, port: str | None = None, hint: str | None = None,
             code: str = "E301", param: str | None = None):
        raise TypeRuleError(message, port, hint, code, param)

    def expect_kind(self, port: str, t: TensorType, *kinds: str) -> None:
        if t.kind not in kinds:
            want = " or ".join(T.KINDS[k].describe() for k in kinds)
            self.fail(f"{self.name} expects {want} for '{port}' but {self.source(port)} "
                      f"gives {t}", port, code="E302")

    def expect_dim(self, port: str, t: TensorType, axis: str | int, want, what: str) -> None:
        got = t.dim(axis)
        if T.differ(got, T.sympy.sympify(want)):
            self.fail(f"{self.name} expects {what} {T.format_dim(T.sympy.sympify(want))} but "
                      f"{self.source(port)} gives {t}", port)

    def expect_same(self, port_a: str, a: Any, port_b: str, b: Any, what: str) -> None:
        if T.differ(T.sympy.sympify(a), T.sympy.sympify(b)):
            self.fail(f"{self.name} needs the same {what} from {self.source(port_a)} and "
                      f"{self.source(port_b)}, but they give "
                      f"{T.format_dim(T.sympy.sympify(a))} and "
                      f"{T.format_dim(T.sympy.sympify(b))}", port_b)

    def exact_div(self, port: str, value, by: int, what: str):
        """value / by, which must be a whole number (e.g. image size by patch size)."""
        q = T.sympy.sympify(value) / by
        if not T.is_integral(q):
            self.fail(f"{self.name}: {what} {T.format_dim(T.sympy.sympify(value))} is not a "
                      f"multiple of {by}", port, code="E304")
        return q


@dataclass(frozen=True)
class Layers:
    """A call argument holding the torch modules of these layers (`moe_aux` reads the
    balancing losses its upstream MoE layers computed)."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Training:
    """A call argument: whether the model is in training mode (dropout, random masks)."""


class Component:
    """Base class. Subclasses set the class attributes, implement `infer` and name `torch`."""

    name: ClassVar[str]
    category: ClassVar[str]  # encoder | connector | fusion | decoder | head | layer | op | loss
    summary: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    inputs: ClassVar[tuple[Port, ...]] = (Port("x"),)
    has_weights: ClassVar[bool] = True
    # names of the linear layers inside, which `lora(targets=[...])` can adapt
    lora_targets: ClassVar[tuple[str, ...]] = ()
    # The torch face: with weights an nn.Module class built with `torch_args` as keyword
    # arguments, without weights a function of the inputs and `torch_args`. Either
    # "module:attribute", imported when the model is built, or the object itself.
    torch: ClassVar[Any] = None
    # How the component treats positions along a sequence, which decides whether a model can
    # generate one token at a time (mmgraph/ir/passes/decoding.py): "pointwise" (each position
    # on its own), "causal" (attends backwards only; its torch face keeps a KV cache while
    # generating), "joins" (concatenates positions: inputs computed without the tokens come
    # first and are read on the first step only) or "mixing" (anything else, the default).
    sequence: ClassVar[str] = "mixing"
    # ports whose value must not depend on the generated tokens (cross-attention's context, a
    # decoder's prefix): generation computes them once per request
    context_ports: ClassVar[tuple[str, ...]] = ()
    # why a "mixing" layer cannot generate, in the E701 message
    sequence_why: ClassVar[str] = "mixes positions in both directions"

    def outputs(self, p: BaseModel) -> tuple[str, ...]:
        """Output port names; the first is always `out`."""
        return ("out",)

    def infer(self, p: BaseModel, x: dict[str, Any], ctx: RuleContext
              ) -> TensorType | dict[str, TensorType]:
        raise NotImplementedError

    def sequence_rule(self, p: BaseModel) -> str:
        """`sequence` for these parameters (a transformer layer with causal=false mixes)."""
        return self.sequence

    def verify(self, node, graph) -> list:
        """Checks that need the whole graph (e.g. an ancestor of some kind). Diagnostics."""
        return []

    def torch_args(self, p: BaseModel, x: dict[str, Any], ctx: RuleContext) -> dict[str, Any]:
        """The face's keyword arguments: every parameter, so that defaults live in `Params`
        alone, plus what the weights' sizes need from the input types `x` (`in_width`, read
        with `common.fixed`). Override to add those, or to leave out parameters only the type
        rule reads."""
        return p.model_dump()

    def torch_call_args(self, p: BaseModel, x: dict[str, Any], node, graph) -> dict[str, Any]:
        """Extra keyword arguments of one call, from the checked graph around it: literals,
        `Layers(...)` or `Training()`."""
        return {}

    def torch_face(self) -> Any:
        """The torch face itself (this imports torch)."""
        face = type(self).torch  # through the class: a function stays unbound
        if face is None:
            kind = "nn.Module class" if self.has_weights else "function"
            raise NotImplementedError(f"component '{self.name}' has no torch face: set "
                                      f"`torch` to its {kind} to run it")
        if isinstance(face, str):
            module, _, attribute = face.partition(":")
            face = getattr(importlib.import_module(module), attribute)
        return face


def spec_folder(span) -> str | None:
    """The folder of the spec file a span is in (None for a spec read from a string)."""
    path = getattr(span, "path", "") or ""
    return None if path.startswith("<") or not path else str(Path(path).resolve().parent)


REGISTRY: dict[str, Component] = {}


def register(cls: type[Component]) -> type[Component]:
    """Class decorator: add a component to the registry under `cls.name`."""
    for old in ("torch_module", "torch_function"):
        if hasattr(cls, old):
            raise TypeError(f"component {cls.name!r}: `{old}` is now `torch` (the class or "
                            "function itself, or its \"module:attribute\" path)")
    if cls.name in REGISTRY and type(REGISTRY[cls.name]) is not cls:
        raise ValueError(f"component {cls.name!r} is registered twice "
                         f"({type(REGISTRY[cls.name]).__module__} and {cls.__module__})")
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Component | None:
    _load_builtins()
    return REGISTRY.get(name)


def names() -> list[str]:
    _load_builtins()
    return sorted(REGISTRY)


_BUILTINS_LOADED = False


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from mmgraph.components import (  # noqa: F401
            alignment,
            backbones,
            connectors,
            ctc,
            decoders,
            encoders,
            frames,
            fusion,
            gates,
            heads,
            hf,
            hf_backbones,
            layers,
            losses,
            masked_regions,
            ops,
            prototypes,
            queues,
            recurrent,
            sets,
            similarity,
            video,
            vision_grids,
        )
        _load_entry_points()


def _load_entry_points() -> None:
    for ep in metadata.entry_points(group="mmgraph.components"):
        ep.load()


def load_plugin(path: str | Path) -> None:
    """Import a user's component module from a file; its @register classes join the registry.

    This is the one place mmgraph runs user Python, and only when the user names the file on
    the command line (`--plugin`) — never because a spec asked for it.
    """
    _load_builtins()
    p = Path(path).resolve()
    if not p.exists():
        raise FileNotFoundError(f"plugin {path} does not exist")
    if not p.is_file():
        raise FileNotFoundError(f"plugin {path} is not a file")
    name = f"mmgraph_plugin_{p.stem}"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(p):
        return  # the same plugin named twice
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
