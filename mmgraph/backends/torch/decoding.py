"""A generated model's generation steps as plain modules, for the prefill and decode exports.

`generate` keeps its KV cache in Python objects between calls; an ONNX graph cannot. These
wrappers turn one step into a function of tensors only: the cache's contents come in as inputs
(`past_key_values.N.key/value`, the projected cross-attention context `cross.N.key/value`)
and go out as outputs (`present.N.key/value`), in the order the attention calls take their
slots (`mm.cache`). They live in the torch backend because only it may touch the components'
torch faces; `mmgraph.export.decoder` traces them.

All three return dicts (name -> tensor), the shape of a generated part's output, so that
`Half` turns them into fp16 copies the way it does parts.
"""

from __future__ import annotations

import torch

from mmgraph.components.nn.cache import KVCache, decoding

PAST = "past_key_values.{}.{}"  # optimum's names, so that tools written for them apply
PRESENT = "present.{}.{}"
CROSS = "cross.{}.{}"  # cross-attention keys/values of the context: made by prefill only
MASK = "attention_mask"  # [B, tokens so far] 1 = real token, 0 = left padding


def cache_outputs(cache: KVCache, with_cross: bool) -> dict[str, torch.Tensor]:
    out = {}
    for i, (k, v) in enumerate(cache.self_kv):
        out[PRESENT.format(i, "key")], out[PRESENT.format(i, "value")] = k, v
    if with_cross:
        for i, (k, v) in enumerate(cache.cross_kv):
            out[CROSS.format(i, "key")], out[CROSS.format(i, "value")] = k, v
    return out


class _Borrowing(torch.nn.Module):
    """Holds the model's top-level layers as its own (like a generated part), so that the
    ONNX node and weight names start with the spec's layer names ("/lm/layers.0/...") and the
    TensorRT gate can name the spec line of a finding."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self.__dict__["model"] = model  # not a submodule: its layers are registered above


class ContextStep(_Borrowing):
    """context inputs -> the frontier values every step reads (`generation_context`)."""

    def __init__(self, model: torch.nn.Module, frontier: list[str]):
        super().__init__(model)
        self.frontier = frontier

    def forward(self, *inputs):
        return dict(zip(self.frontier, self.model.generation_context(*inputs)))


class PrefillStep(_Borrowing):
    """frontier values, prompt tokens [B, T], attention_mask [B, T] -> logits of every
    position, then every self-attention slot's keys/values and every cross-attention slot's
    projected context."""

    def __init__(self, model: torch.nn.Module, frontier: list[str], logits: str):
        super().__init__(model)
        self.frontier, self.logits = frontier, logits

    def forward(self, *args):
        *values, tokens, mask = args
        cache = KVCache(mask)
        with decoding(cache):
            logits = self.model.generation_step(*values, tokens)
        return {self.logits: logits, **cache_outputs(cache, with_cross=True)}


class DecodeStep(_Borrowing):
    """frontier values, new tokens [B, N], attention_mask [B, tokens so far incl. the new],
    past keys/values and cross keys/values -> logits of the new positions and the grown
    keys/values. Frontier values that a decode step does not read (a prefix read on the
    first step only, a context read through cross-attention) drop out of the traced graph."""

    def __init__(self, model: torch.nn.Module, frontier: list[str], logits: str,
                 self_slots: int, cross_slots: int):
        super().__init__(model)
        self.frontier, self.logits = frontier, logits
        self.self_slots, self.cross_slots = self_slots, cross_slots

    def forward(self, *args):
        n = len(self.frontier)
        values, (tokens, mask), rest = args[:n], args[n:n + 2], args[n + 2:]
        pairs = [(rest[2 * i], rest[2 * i + 1]) for i in range(len(rest) // 2)]
        cache = KVCache(mask, past=pairs[:self.self_slots], cross=pairs[self.self_slots:])
        with decoding(cache):
            logits = self.model.generation_step(*values, tokens)
        return {self.logits: logits, **cache_outputs(cache, with_cross=False)}

    def input_names(self, tokens: str) -> list[str]:
        return (list(self.frontier) + [tokens, MASK]
                + [PAST.format(i, kv) for i in range(self.self_slots) for kv in ("key", "value")]
                + [CROSS.format(i, kv) for i in range(self.cross_slots)
                   for kv in ("key", "value")])


def step_cache(model: torch.nn.Module, values: tuple, tokens: torch.Tensor,
               mask: torch.Tensor) -> KVCache:
    """The cache one prefill leaves (to count its slots before tracing)."""
    cache = KVCache(mask)
    with torch.no_grad(), decoding(cache):
        model.generation_step(*values, tokens)
    return cache
