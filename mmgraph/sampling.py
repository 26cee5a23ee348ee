"""The generation loop and the choice of each next token, shared by every backend.

A backend gives two functions: `prefill(tokens, mask)` runs the padded prompts and returns the
logits of their last position, `step(tokens, mask)` runs one new token per row and returns its
logits; both return float arrays [B, V]. Choosing the next token happens here, in numpy, on
those logits, so torch, onnxruntime and TensorRT pick the same tokens from the same logits,
sampling included (one seeded generator).

Prompts of different lengths are left-padded: the mask is 0 on padding, and the backends
count positions over real tokens only, so a prompt gets the tokens it would get alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmgraph.errors import InputError

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Sampling(BaseModel):
    """How the next token is chosen. temperature 0 is greedy (the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)  # > 1 discourages tokens already present
    stop: tuple[int, ...] = ()  # token ids that end a row (kept in its output)
    seed: int = 0


def check_ids(name: str, rows: Sequence[Sequence[int]], vocab: int) -> None:
    """Token ids inside 0..vocab-1, named by where they came from."""
    for r, row in enumerate(rows):
        for c, t in enumerate(row):
            if not 0 <= int(t) < vocab:
                raise InputError(f"{name}: token id {int(t)} at [{r}, {c}] is outside the "
                                 f"vocabulary 0..{vocab - 1}")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, L] token ids and mask (1 = real) of prompts padded on the left to one length."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    length = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), length), dtype=np.int64)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    return tokens, mask


def choose(logits: np.ndarray, history: list[list[int]], s: Sampling,
           rng: np.random.Generator) -> np.ndarray:
    """The next token of each row from its logits [B, V]."""
    logits = np.asarray(logits, dtype=np.float64).copy()
    if s.repetition_penalty != 1.0:  # CTRL's penalty, as transformers applies it
        for row, seen in zip(logits, history):
            ids = np.unique(np.asarray(seen, dtype=np.int64))
            values = row[ids]
            row[ids] = np.where(values > 0, values / s.repetition_penalty,
                                values * s.repetition_penalty)
    if s.temperature == 0:
        return logits.argmax(axis=-1)
    logits /= s.temperature
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -s.top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if s.top_p < 1.0:  # the smallest set of most likely tokens holding top_p of the mass
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(keep, order, before < s.top_p, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs], dtype=np.int64)


def generate(prefill: Logits, step: Logits, prompts: Sequence[Sequence[int]], s: Sampling,
             *, pad_id: int = 0,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """The new tokens of each prompt. `on_token(row, id)` streams them as they come; a row
    ends at a stop token (kept) or after `max_new_tokens`."""
    tokens, mask = left_pad(prompts, pad_id)
    rng = np.random.default_rng(s.seed)
    history = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    done = np.zeros(len(prompts), dtype=bool)
    logits = prefill(tokens, mask)
    for i in range(s.max_new_tokens):
        chosen = choose(logits, history, s, rng)
        for row, t in enumerate(chosen.tolist()):
            if done[row]:
                continue
            out[row].append(t)
            history[row].append(t)
            if on_token is not None:
                on_token(row, t)
            done[row] = t in s.stop
        if done.all() or i == s.max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
        logits = step(chosen[:, None], mask)
    return out
