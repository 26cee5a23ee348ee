"""Torch faces of mmgraph/components/frames.py: reshapes and one transpose.

Every size is computed from `x.shape` (never `unflatten(..., -1)`): the ONNX tracer keeps
sizes read from `x.shape` dynamic, but freezes the shape of an `unflatten` with -1 at the
traced batch, so a later layer reading its batch would export a constant."""

from __future__ import annotations

from mmgraph.errors import InputError


def _whole(size, by: int, what: str, call: str) -> None:
    """A size the reshape cuts into `by` parts must be a multiple of `by`: the type rule
    proves it for `B * F`, not for a batch `B` the spec left free. Checked on concrete sizes
    only (eager runs, the ONNX tracer); a symbolic size under torch.export is left alone."""
    if isinstance(size, int) and size % by:
        raise InputError(f"{call}: the {what} is {size}, not a multiple of {by}")


def frames_to_batch(x, *, frames: int | None, split_tokens: bool):
    """[B, F, ...] -> [B * F, ...]; a frame-major Seq [B, F * N, D] -> [B * F, N, D]."""
    if split_tokens:
        b, n, d = x.shape
        _whole(n, frames, "token count", f"frames_to_batch(frames={frames})")
        return x.reshape(b * frames, n // frames, d)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def batch_to_frames(x, *, frames: int, join_tokens: bool):
    """[B * F, ...] -> [B, F, ...]; a Seq [B * F, N, D] -> [B, F * N, D] (frame-major)."""
    _whole(x.shape[0], frames, "batch", f"batch_to_frames(frames={frames})")
    b = x.shape[0] // frames
    if join_tokens:
        return x.reshape(b, frames * x.shape[1], x.shape[2])
    return x.reshape(b, frames, *x.shape[1:])


def locations_to_batch(x, *, frames: int):
    """[B, F * N, D] -> [B, F, N, D] -> [B, N, F, D] -> [B * N, F, D]."""
    b, t, d = x.shape
    _whole(t, frames, "token count", f"locations_to_batch(frames={frames})")
    n = t // frames
    return x.reshape(b, frames, n, d).transpose(1, 2).reshape(b * n, frames, d)


def batch_to_locations(x, *, locations: int):
    """[B * N, F, D] -> [B, N, F, D] -> [B, F, N, D] -> [B, F * N, D]."""
    bn, f, d = x.shape
    _whole(bn, locations, "batch", f"batch_to_locations(locations={locations})")
    b = bn // locations
    return x.reshape(b, locations, f, d).transpose(1, 2).reshape(b, f * locations, d)


def vec_to_seq(x):
    return x.unsqueeze(1)
