"""Deployment targets: declarative files in exporters/ (like MMDeploy's deploy configs).

Each names its runtime, opset, precision, the TensorRT version it assumes, the workspace,
the parity tolerance and the templates it renders. `mmgraph export --target NAME` picks one;
a path to a .toml file works too, for targets of your own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mmgraph.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class TargetError(UserError):
    """A target name or file that cannot be used."""


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str  # onnxruntime | tensorrt | triton
    opset: int
    precision: str  # fp32 | fp16
    tolerance: float = 1e-4
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    tensorrt: str | None = None
    workspace_mb: int = 1024
    backend: str = "onnxruntime"
    templates: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


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
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = _folder() / f"{name_or_path}.toml"
    if not path.is_file():
        from mmgraph.lang.diagnostics import did_you_mean

        hint = did_you_mean(name_or_path, names())
        raise TargetError(f"no export target '{name_or_path}'" + (f"; {hint}" if hint else "")
                          + f" (targets: {', '.join(names())})")
    data = tomllib.loads(path.read_text())
    allowed = set(Target.__dataclass_fields__)
    unknown = set(data) - allowed
    if unknown:
        raise TargetError(f"{path}: unknown keys {sorted(unknown)}")
    for key in ("providers", "templates"):
        if key in data:
            data[key] = tuple(data[key])
    try:
        return Target(**data)
    except TypeError as exc:
        raise TargetError(f"{path}: {exc}") from None
