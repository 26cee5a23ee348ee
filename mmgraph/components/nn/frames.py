"""Torch faces of mmgraph/components/frames.py: views and one transpose, with -1 for the
batch so that an exported graph keeps it dynamic."""

from __future__ import annotations


def frames_to_batch(x, *, frames: int | None, split_tokens: bool):
    """[B, F, ...] -> [B * F, ...]; a frame-major Seq [B, F * N, D] -> [B * F, N, D]."""
    if split_tokens:
        x = x.unflatten(1, (frames, -1))
    return x.flatten(0, 1)


def batch_to_frames(x, *, frames: int, join_tokens: bool):
    """[B * F, ...] -> [B, F, ...]; a Seq [B * F, N, D] -> [B, F * N, D] (frame-major)."""
    x = x.unflatten(0, (-1, frames))
    return x.flatten(1, 2) if join_tokens else x


def locations_to_batch(x, *, frames: int):
    """[B, F * N, D] -> [B, F, N, D] -> [B, N, F, D] -> [B * N, F, D]."""
    return x.unflatten(1, (frames, -1)).transpose(1, 2).flatten(0, 1)


def batch_to_locations(x, *, locations: int):
    """[B * N, F, D] -> [B, N, F, D] -> [B, F, N, D] -> [B, F * N, D]."""
    return x.unflatten(0, (-1, locations)).transpose(1, 2).flatten(1, 2)


def vec_to_seq(x):
    return x.unsqueeze(1)
