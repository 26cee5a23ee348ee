"""The base class of generated models: maps a runtime error back to the spec line.

Every line of a generated `forward`/`losses` ends with `# <type>  <spec file>:<line>`. When
an exception escapes the model, the innermost frame that ran generated code tells which
line it was, and the exception gets a note naming the spec's file, line and source text.
The exception itself (type, message, traceback) is left as it was. The mark is read from the
line's real comment (Python's tokenizer finds it, so a `#` inside a string is no mark); the
code generator keeps both its parts single lines without runs of spaces.
"""

from __future__ import annotations

import io
import linecache
import re
import tokenize
import traceback

import torch
from torch import nn

_WHERE = re.compile(r".*\.mmg:\d+")


class GeneratedModel(nn.Module):
    spec: str = ""
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}
    loss_weights: dict[str, float] = {}

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return super().__call__(*args, **kwargs)
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            _note_spec_line(exc, type(self).__module__)
            raise

    @classmethod
    def forward_inputs(cls) -> list[str]:
        """The inputs `forward` takes (a loss's targets are only `losses`' inputs)."""
        code = cls.forward.__code__
        return list(code.co_varnames[1:code.co_argcount])

    def losses(self, **inputs):  # generated models with losses override this
        raise NotImplementedError(f"{type(self).__name__} declares no loss")


def _note_spec_line(exc: BaseException, module: str) -> None:
    if getattr(exc, "_mmgraph_noted", False):
        return
    spec_line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(("<mmgraph", "/")):
            spec_line = _spec_mark(linecache.getline(frame.filename, frame.lineno)) or spec_line
    if spec_line is None:
        return
    where, code = spec_line
    exc.add_note(f"mmgraph: raised while computing the value of {where} "
                 f"(generated code: {code})")
    exc._mmgraph_noted = True


def _spec_mark(text: str) -> tuple[str, str] | None:
    """(`file:line`, the code before the comment) of a generated line that ends with
    `# <type>  <file>:<line>` or `# <file>:<line>`; None for any other line."""
    text = text.strip()
    comment = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                comment = token
                break
    except (tokenize.TokenError, SyntaxError):  # the first line of a wrapped call
        pass
    if comment is None:
        return None
    where = comment.string[1:].strip().rsplit("  ", 1)[-1]
    if not _WHERE.fullmatch(where):
        return None
    return where, text[:comment.start[1]].rstrip()


class ExportPart(nn.Module):
    """Base of generated export parts: the model's top-level layers, borrowed (not copied),
    so a part computes with exactly the weights the model has."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
