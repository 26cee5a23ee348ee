"""The layer contract in pyproject.toml ([tool.importlinter]) holds, and it has teeth: a copy of
the package with one upward import added breaks it, naming the import. (That `mmgraph check`
imports no torch at run time is tests/test_cli.py::test_check_does_not_import_torch.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # the dev extra installs it


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=folder, capture_output=True,
                          text=True, timeout=120)


def test_the_layer_contract_holds():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module, line, broken", [
    ("backends/torch/load.py", "from mmgraph.compiler import build_graph",
     "mmgraph.backends.torch.load -> mmgraph.compiler"),
    ("ir/schema.py", "from mmgraph.components import registry",
     "mmgraph.ir.schema -> mmgraph.components.registry"),
    ("export/onnx_parts.py", "from mmgraph.train import checkpoint",
     "mmgraph.export.onnx_parts -> mmgraph.train.checkpoint"),
    ("ir/graph.py", "from mmgraph.ir.passes import base",
     "mmgraph.ir.graph -> mmgraph.ir.passes.base"),
    ("components/registry.py", "from mmgraph.ir.passes import base",
     "mmgraph.components.registry -> mmgraph.ir.passes.base"),
    ("lang/parser.py", "import torch", "mmgraph.lang.parser -> torch"),
    ("export/onnx_parts.py", "from mmgraph.components.nn import layers",
     "mmgraph.export.onnx_parts -> mmgraph.components.nn.layers"),
    ("runtime/session.py", "from mmgraph.build import load",
     "mmgraph.runtime.session -> mmgraph.build"),
    ("suggest.py", "from mmgraph.lang import diagnostics",
     "mmgraph.suggest -> mmgraph.lang.diagnostics"),
    ("train/trainer.py", "from mmgraph.ir.passes import trainability",
     "mmgraph.train.trainer -> mmgraph.ir.passes.trainability"),
], ids=lambda v: v if " -> " in v else "")
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "mmgraph", tmp_path / "mmgraph",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "mmgraph" / module, "a", encoding="utf-8") as fh:
        fh.write(f"\n{line}  # noqa\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert broken in proc.stdout
