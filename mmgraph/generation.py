"""`mmgraph generate`: text from a spec's model (with a checkpoint) or from an export folder.

Both paths share everything but the backend: the prompts become token ids with the same
tokenizer the model trained with (the byte tokenizer unless `--tokenizer` or a pretrained
part names one), optionally through a chat template; images and audio files become the
context inputs the way training data does (`mmgraph.train.convert`); the backend's
`generate` runs the `mmgraph.sampling` loop; the new ids are decoded back to text.

A model that cannot generate is a spec error at the layer that prevents it (E701), with the
reason the decoding pass gave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgraph.errors import InputError, UsageError
from mmgraph.lang.diagnostics import error


@dataclass
class Generated:
    prompt: str
    ids: list[int]
    text: str


@dataclass
class Request:
    """What the user asked for, backend-independent."""

    prompts: list[str]
    files: dict[str, list[str]]  # context input kind ("image", "audio") -> file paths
    sampling: dict[str, Any]
    stop_texts: list[str]
    tokenizer: str | None = None
    chat: bool = False


def decoding_error(g) -> Exception:
    """E701 at the layer (or model) that keeps `g` from generating."""
    problem = g.decoding_problem
    return error("E701", f"cannot generate: {problem.message}", problem.span,
                 hint="generation needs a Tokens input whose logits depend on earlier tokens "
                      "only (causal attention, per-position layers)")


def prompt_ids(tok, text: str, chat: bool, template: str | None = None) -> list[int]:
    """A prompt's ids without the end-of-text token the tokenizer adds to whole texts, so the
    model continues the text rather than starting a new one. With `chat`, the text is one
    user turn of the chat template training used (`template`: the spec's chat_template)."""
    if chat:
        from mmgraph.train.chat import render_prompt

        text = render_prompt(tok, text, template)
    ids = tok.ids(text)
    while ids and ids[-1] == tok.eos_id:
        ids = ids[:-1]
    return ids


def stop_ids(tok, texts: list[str], vocab: int) -> tuple[int, ...]:
    """Each stop text as the one token it must be, plus the tokenizer's end of text."""
    out = [tok.eos_id] if 0 <= tok.eos_id < vocab else []
    for text in texts:
        ids = [i for i in tok.ids(text) if i not in (getattr(tok, "bos_id", None), tok.eos_id)]
        if len(ids) != 1:
            raise InputError(f"stop token {text!r} is {len(ids)} tokens for tokenizer "
                             f"{tok.name}, not one: give a single token (or --stop-id N)")
        out.append(ids[0])
    return tuple(dict.fromkeys(out))


def check_sampling(settings: dict) -> None:
    """The sampling settings, each mistake named by its command-line flag."""
    from pydantic import ValidationError

    from mmgraph.sampling import Sampling

    try:
        Sampling(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "a setting"
        raise UsageError(f"{flag}: {first['msg'].lower()} (got {first.get('input')!r})") \
            from None


def context_values(types: dict[str, Any], files: dict[str, list[str]], norms: dict) -> dict:
    """The context inputs from files: `types` maps each context input to its TensorType.
    Images go to every Image input, audio to every Audio/Mel input; each file is converted
    like training data (resized, normalised), one row per file."""
    import torch

    from mmgraph.train.convert import Mismatch, to_tensor
    from mmgraph.train.sources import _open_image

    out = {}
    for name, t in types.items():
        kind = "image" if t.kind == "Image" else "audio" if t.kind in ("Audio", "Mel") else None
        paths = files.get(kind or "", [])
        if kind is None or not paths:
            flag = f"--{kind}" if kind else f"a value for input '{name}'"
            raise InputError(f"generating needs {flag} PATH for input '{name}' ({t})")
        shape = [int(d) if d.is_Integer else None for d in t.dims[1:]]
        rows = []
        for path in paths:
            p = Path(path)
            if not p.is_file():
                raise InputError(f"input '{name}': {path} is not a file")
            try:
                value = _open_image(p) if kind == "image" else _read_audio(p)
                rows.append(to_tensor(t, shape, value, None, norm=norms.get(name)))
            except Mismatch as exc:
                raise InputError(f"input '{name}' from {path}: {exc}") from None
            except (OSError, ValueError) as exc:
                raise InputError(f"input '{name}': cannot read {path}: {exc}") from None
        out[name] = torch.stack(rows)
    return out


def _read_audio(path: Path):
    """A waveform or features saved with numpy (.npy), as training data reads audio."""
    import numpy as np

    return np.load(path, allow_pickle=False)


def run(req: Request, backend_generate: Callable, tok, vocab: int, context: dict,
        on_text: Callable[[int, str], None] | None = None,
        template: str | None = None) -> list[Generated]:
    """Tokenize, generate (streaming text through `on_text(row, new_text)`), decode."""
    ids = [prompt_ids(tok, p, req.chat, template) for p in req.prompts]
    stops = stop_ids(tok, req.stop_texts, vocab)
    sampling = {**req.sampling, "stop": tuple(req.sampling.get("stop", ())) + stops}
    check_sampling(sampling)
    produced: list[list[int]] = [[] for _ in ids]
    shown = ["" for _ in ids]

    def on_token(row: int, token: int) -> None:
        produced[row].append(token)
        if on_text is not None:
            text = tok.decode(produced[row])
            if text.startswith(shown[row]) and len(text) > len(shown[row]):
                on_text(row, text[len(shown[row]):])
                shown[row] = text

    new = backend_generate(ids, on_token=on_token, pad_id=tok.pad_id, **context, **sampling)
    return [Generated(p, n, tok.decode(n)) for p, n in zip(req.prompts, new)]


def from_spec(spec: str, req: Request, *, checkpoint: str | None, overrides: dict,
              model_name: str | None, lib_dirs, device: str = "cpu", cache: bool = True,
              on_text=None) -> list[Generated]:
    from mmgraph.build import load_class
    from mmgraph.train.preprocess import image_norms, pretrained_tokenizer
    from mmgraph.train.run import check_device, load_trained
    from mmgraph.train.tokenize import make_tokenizer

    check_sampling(req.sampling)
    _, g = load_class(spec, model_name, lib_dirs=lib_dirs, **overrides)
    if g.decoding is None:  # said before any weights are read
        raise decoding_error(g)
    model, g, _ = load_trained(spec, checkpoint, overrides, model_name, lib_dirs)
    plan = g.decoding
    model.to(check_device(device)).eval()
    tok = make_tokenizer(req.tokenizer or pretrained_tokenizer(g))
    _check_vocab(tok, plan.vocab)
    types = {n: g.nodes[n].type for n in plan.context_inputs}
    shapes = {n: [int(d) if d.is_Integer else None for d in t.dims[1:]]
              for n, t in types.items()}
    context = context_values(types, req.files, image_norms(g, shapes))

    def backend(ids, **kw):
        return model.generate(ids, cache=cache, **kw)

    # the checked IR holds the validated train settings: no need to validate them all again
    template = g.train.settings.get("chat_template") if g.train else None
    return run(req, backend, tok, plan.vocab, context, on_text, template)


def from_export(folder: str, req: Request, *, on_text=None) -> list[Generated]:
    from mmgraph.ir import types as T
    from mmgraph.runtime.session import open_export
    from mmgraph.train.tokenize import make_tokenizer

    check_sampling(req.sampling)
    pipeline = open_export(folder)
    info = getattr(pipeline, "generation", None)
    if info is None:
        raise UsageError(f"{folder} holds no decoder export (prefill/decode graphs): export a "
                         "spec that can generate with this version of mmgraph")
    tok = make_tokenizer(req.tokenizer)
    _check_vocab(tok, info.vocab)
    types = {c.name: T.make(c.kind, tuple(T.sympy.sympify(d) if isinstance(d, str) else d
                                          for d in c.shape), dtype=_dtype(c.dtype))
             for c in info.context}
    context = {k: v.numpy() for k, v in context_values(types, req.files, {}).items()}
    return run(req, pipeline.generate, tok, info.vocab, context, on_text, info.chat_template)


def _dtype(numpy_name: str) -> str:
    return {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32",
            "bool": "bool"}.get(numpy_name, "f32")


def _check_vocab(tok, vocab: int) -> None:
    if tok.vocab_size > vocab:
        raise InputError(f"tokenizer {tok.name} has {tok.vocab_size} ids but the model's vocab "
                         f"is {vocab}: its ids would fall outside the embedding (use the "
                         "tokenizer the model was trained with, --tokenizer DIR)")
