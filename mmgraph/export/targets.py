"""Deployment targets: declarative files in exporters/ (like MMDeploy's deploy configs).

Each names its runtime, opset, precision, the TensorRT version it assumes, the workspace,
the parity tolerance and the templates it renders. `mmgraph export --target NAME` picks one;
a path to a .toml file works too, for targets of your own.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from mmgraph.errors import UserError
from mmgraph.runtime.manifest import problems

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class TargetError(UserError):
    """A target name or file that cannot be used."""


class Target(BaseModel):
    """One deployment target, as its .toml file declares it (validated: types, values)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    name: str
    description: str
    runtime: Literal["onnxruntime", "tensorrt", "triton"]
    opset: PositiveInt  # the range torch exports is checked at export
    precision: Literal["fp32", "fp16"]
    tolerance: PositiveFloat = 1e-4
    # TOML arrays are lists: tuples are taken from them, not from strings
    providers: tuple[str, ...] = Field(("CPUExecutionProvider",), strict=False)
    tensorrt: str | None = None
    workspace_mb: PositiveInt = 1024
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    templates: tuple[str, ...] = Field((), strict=False)
    # fp16 targets: ONNX node-name prefixes ("/part/lm/head") whose MatMul/Gemm/Conv stay fp32
    # on purpose. Every other one computes in fp16 (tests/test_fp16_compute.py holds it to that).
    fp32_compute: tuple[str, ...] = Field((), strict=False)

    def to_json(self) -> dict:
        # fp32_compute only where a target sets it, so manifests of other targets stay as were
        return self.model_dump(mode="json", exclude=set() if self.fp32_compute
                               else {"fp32_compute"})


def _folder() -> Path:
    try:
        folder = resources.files("mmgraph.exporters")
        if folder.is_dir():
            return Path(str(folder))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "exporters"


def names() -> list[str]:
    return sorted(p.stem for p in _folder().glob("*.toml"))


def load(name_or_path: str) -> Target:
    """A target by name (a file in exporters/) or by the path of a .toml file."""
    path = Path(name_or_path)
    available = f"(targets: {', '.join(names())})"
    if path.suffix != ".toml":
        path = _folder() / f"{name_or_path}.toml"
        if not path.is_file():
            from mmgraph.suggest import did_you_mean

            hint = did_you_mean(name_or_path, names())
            raise TargetError(f"no export target '{name_or_path}'"
                              + (f"; {hint}" if hint else "") + f" {available}")
    elif not path.is_file():
        raise TargetError(f"{path}: no such target file {available}")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise TargetError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - set(Target.model_fields)
    if unknown:
        raise TargetError(f"{path}: unknown keys {sorted(unknown)}; a target has "
                          f"{', '.join(Target.model_fields)}")
    try:
        return Target.model_validate(data)
    except ValidationError as exc:
        raise TargetError(f"{path}: {problems(exc)}") from None
