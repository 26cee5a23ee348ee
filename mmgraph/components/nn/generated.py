"""The base classes of generated modules: the model checks its inputs at the boundary and
maps a runtime error back to the spec line.

`forward` first checks each given tensor against its declared input (`DeclaredInput`): rank,
fixed dims exact, a dim name the same size in every input, dtype kind. A mismatch is an
`InputError` naming the input, its spec line, the type expected and what came, before any
layer sees the tensor. Integer compares only, so the check costs nothing next to a layer.

Every computing line of a generated `forward` ends with `# <type>  <spec file>:<line>`. When an
exception escapes the model, the innermost frame that ran generated code tells which line it
was, and the exception gets a note naming the spec's file, line and source text. The
exception itself (type, message, traceback) is left as it was. The mark is read from the
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

from mmgraph import sampling
from mmgraph.components.nn import cache as kv_cache
from mmgraph.errors import InputError

_WHERE = re.compile(r".*\.mmg:\d+")
_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_INTEGER = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})
# the dtypes a declared dtype accepts: its kind, at any precision
_ACCEPTS = {"bool": (frozenset({torch.bool}), "a bool tensor")}
_ACCEPTS.update({d: (_FLOAT, "a floating-point tensor") for d in ("f16", "bf16", "f32", "f64")})
_ACCEPTS.update({d: (_INTEGER, "an integer tensor") for d in ("u8", "i8", "i16", "i32", "i64")})


class DeclaredInput:
    """One input as the spec declares it, in the form the boundary check reads fast.

    `dims` holds an int for a fixed size, a dim's name (`"B"`) for a size every input must
    agree on, or an expression (`"576 + T"`), which is left to the layers: evaluating it
    would cost more than the check is worth.
    """

    __slots__ = ("type", "dims", "dtype", "where", "loss_only", "fixed", "named", "dtypes",
                 "kind_text")

    def __init__(self, type: str, dims: tuple, dtype: str, where: str, loss_only: bool = False):
        self.type, self.dims, self.dtype, self.where = type, dims, dtype, where
        self.loss_only = loss_only  # only the losses read it: forward may go without
        self.fixed = tuple((axis, d) for axis, d in enumerate(dims) if isinstance(d, int))
        self.named = tuple((axis, d) for axis, d in enumerate(dims)
                           if isinstance(d, str) and d.isidentifier())
        self.dtypes, self.kind_text = _ACCEPTS[dtype]

    def check(self, name: str, value, sizes: dict[str, tuple[int, str]]) -> None:
        """Raise `InputError` unless `value` fits; `sizes` holds each dim name's size so far
        and the input it came from."""
        if not isinstance(value, torch.Tensor):
            raise self.error(name, f"got {type(value).__name__}, not a tensor")
        shape = value.shape
        if len(shape) != len(self.dims):
            raise self.error(name, f"got shape {list(shape)}: rank {len(shape)}, "
                                   f"not {len(self.dims)}")
        for axis, want in self.fixed:
            if shape[axis] != want:
                raise self.error(name, f"got shape {list(shape)}: axis {axis} must be {want}")
        for axis, dim in self.named:
            got = shape[axis]
            seen = sizes.get(dim)
            if seen is None:
                sizes[dim] = (got, name)
            elif seen[0] != got:
                where = "earlier in this input" if seen[1] == name else f"in input '{seen[1]}'"
                raise self.error(name, f"got shape {list(shape)}: {dim} is {got} here but "
                                       f"{seen[0]} {where}")
        if value.dtype not in self.dtypes:
            raise self.error(name, f"got dtype {str(value.dtype).removeprefix('torch.')}: "
                                   f"needs {self.kind_text} ({self.dtype})")

    def error(self, name: str, got: str) -> InputError:
        return InputError(f"input '{name}' ({self.where}) expects {self.type}, {got}")


class GeneratedModel(nn.Module):
    """One generated model. `forward(**inputs)` returns the outputs by name; with
    `return_losses=True`, `(outputs, losses)` from the same pass."""

    spec: str = ""
    inputs: dict[str, DeclaredInput] = {}
    outputs: dict[str, str] = {}
    loss_weights: dict[str, float] = {}
    # how the model generates (tokens input, logits output, vocab, context inputs, max_len),
    # from mmgraph/ir/passes/decoding.py; empty with `cannot_generate` saying why
    decoding: dict = {}
    cannot_generate: str = ""

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return super().__call__(*args, **kwargs)
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            _note_spec_line(exc, type(self).__module__)
            raise

    def losses(self, *args, **inputs) -> dict[str, torch.Tensor]:
        """Each declared loss, unweighted, and their weighted "total": the second half of
        `self(..., return_losses=True)`, so errors are noted with their spec line."""
        if not self.loss_weights:
            raise NotImplementedError(f"{type(self).__name__} declares no loss")
        return self(*args, **inputs, return_losses=True)[1]

    @torch.no_grad()
    def generate(self, tokens, *, cache: bool = True, on_token=None, pad_id: int = 0,
                 **inputs) -> list[list[int]]:
        """The new token ids of each prompt in `tokens` (a list of id lists, or [B, T]).

        The other keyword arguments are the model's context inputs by name (`image=...`:
        one for all prompts or one per prompt) and the `mmgraph.sampling.Sampling` settings
        (max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed).
        `cache=False` recomputes every position at every step (for comparison and tests).
        """
        if not self.decoding:
            raise InputError(f"{type(self).__name__} cannot generate: {self.cannot_generate}")
        plan = self.decoding
        context = {name: inputs.pop(name) for name in plan["context"] if name in inputs}
        missing = [n for n in plan["context"] if n not in context]
        if missing:
            raise InputError(f"generating needs input '{missing[0]}' "
                             f"({self.inputs[missing[0]].where}): {self.inputs[missing[0]].type}")
        settings = sampling.Sampling(**inputs)
        rows = tokens.tolist() if isinstance(tokens, torch.Tensor) else [list(r) for r in tokens]
        where = f"input '{plan['tokens']}' ({self.inputs[plan['tokens']].where})"
        sampling.check_ids(where, rows, plan["vocab"])
        sampling.check_ids("stop tokens", [settings.stop], plan["vocab"])
        device = next(self.parameters()).device
        values = self.generation_context(**self._context_batch(context, len(rows), device))
        steps = _CachedSteps(self, values, device) if cache else \
            _RecomputedSteps(self, values, device)

        def prefill(ids, mask):
            logits = steps.prefill(torch.as_tensor(ids, device=device),
                                   torch.as_tensor(mask, device=device))
            need = logits.shape[1] + settings.max_new_tokens - 1
            if plan["max_len"] is not None and need > plan["max_len"]:
                raise InputError(
                    f"{where}: {ids.shape[1]} prompt tokens (with what comes before them, "
                    f"{logits.shape[1]} positions) and max_new_tokens="
                    f"{settings.max_new_tokens} need {need} positions, over the model's "
                    f"max_len {plan['max_len']}: shorten the prompt or ask for fewer tokens")
            return logits[:, -1].float().cpu().numpy()

        def step(ids, mask):
            logits = steps.step(torch.as_tensor(ids, device=device),
                                torch.as_tensor(mask, device=device))
            return logits[:, -1].float().cpu().numpy()

        return sampling.generate(prefill, step, rows, settings, pad_id=pad_id,
                                 on_token=on_token)

    def _context_batch(self, context: dict, batch: int, device) -> dict:
        """Context inputs checked against their declarations, repeated to the batch when one
        is given for all prompts."""
        sizes: dict[str, tuple[int, str]] = {}
        out = {}
        for name, value in context.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == 1 \
                    and batch > 1:
                value = value.expand(batch, *value.shape[1:])
            self.inputs[name].check(name, value, sizes)
            if value.shape[0] != batch:
                raise InputError(f"input '{name}' ({self.inputs[name].where}) has "
                                 f"{value.shape[0]} rows for {batch} prompts: give one, or one "
                                 "per prompt")
            out[name] = value.to(device)
        return out

    def check_inputs(self, given: dict, return_losses: bool = False) -> None:
        """Each given tensor against its declared input, before any layer sees it. A trace
        (ONNX export) records no Python check: the exported runtime checks its own inputs."""
        if torch.jit.is_tracing():
            return
        sizes: dict[str, tuple[int, str]] = {}
        for name, value in given.items():
            declared = self.inputs[name]
            if value is not None:
                declared.check(name, value, sizes)
            elif return_losses or not declared.loss_only:
                need = "the losses need" if declared.loss_only else "forward needs"
                raise InputError(f"{need} input '{name}' ({declared.where}): {declared.type}")


class _CachedSteps:
    """Prefill the prompts into a KV cache, then one token per step."""

    def __init__(self, model: GeneratedModel, values: tuple, device):
        self.model, self.values, self.cache = model, values, None

    def prefill(self, ids, mask):
        self.cache = kv_cache.KVCache(mask)
        with kv_cache.decoding(self.cache):
            return self.model.generation_step(*self.values, ids)

    def step(self, ids, mask):
        self.cache.extend_tokens(mask[:, -1:])
        with kv_cache.decoding(self.cache):
            return self.model.generation_step(*self.values, ids)


class _RecomputedSteps:
    """Every step recomputes the whole sequence, as `forward` does (prompts of one length)."""

    def __init__(self, model: GeneratedModel, values: tuple, device):
        self.model, self.values, self.ids = model, values, None

    def prefill(self, ids, mask):
        if not bool(mask.all()):
            raise InputError("generating without a cache takes prompts of one length")
        self.ids = ids
        return self.model.generation_step(*self.values, ids)

    def step(self, ids, mask):
        self.ids = torch.cat([self.ids, ids], dim=1)
        return self.model.generation_step(*self.values, self.ids)


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


class GeneratedPart(nn.Module):
    """Base of generated export parts: the model's top-level layers, borrowed (not copied),
    so a part computes with exactly the weights the model has. A part checks no inputs: it
    runs to be traced into ONNX, and the exported runtime checks what it is given."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
