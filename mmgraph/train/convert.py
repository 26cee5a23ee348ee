"""One raw field value to the tensor an input of its kind takes (no batch axis).

Images are matched in channels, resized and scaled to [-1, 1]; text is tokenized; labels,
masks and other kinds are checked against the input's shape; audio is cut or padded, or made
a log-mel spectrogram. A value that does not fit raises `Mismatch`, which the spec adapter
words with the input and the field.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmgraph.ir.types import TensorType
from mmgraph.train.audio import log_mel

MEAN, STD = 0.5, 0.5  # images: 0..1 -> -1..1


def to_tensor(t: TensorType, shape: list[int | None], value: Any, tokenizer,
              norm=None) -> torch.Tensor:
    """`value` as an input of type `t` takes it; `shape` is its sizes without the batch axis
    (None where free). `norm` (an image input's preprocess.ImageNorm, from a pretrained part's
    preprocessor_config.json) replaces the default mean/std of 0.5."""
    if t.kind == "Image":
        return _image(value, *shape, norm=norm)
    if t.kind == "Tokens":
        return _tokens(value, shape[0], tokenizer)
    if t.kind == "Labels":
        return _labels(value, shape)
    if t.kind == "Audio":
        return _pad_to(_wave(value), shape[0])
    if t.kind == "Mel":
        return _mel(value, shape[0], shape[1])
    if t.kind == "Mask":
        return _fixed(value, shape, "a boolean per token").bool()
    return _fixed(value, shape, f"a {t.kind} value")


class Mismatch(Exception):
    """A value that does not fit an input; SpecDataset adds which input and field."""


def _array(value: Any, wanted: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise Mismatch(f"expected {wanted}")
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception:
        raise Mismatch(f"expected {wanted}") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise Mismatch(f"expected {wanted}")
    return arr


def _image(value: Any, c: int, h: int, w: int, norm=None) -> torch.Tensor:
    """Any image as C x H x W floats in [-1, 1] (or normalised with `norm`'s mean/std):
    channels matched, resized bilinearly."""
    wanted = "a PIL image or an HxW / HxWxC / CxHxW array"
    if hasattr(value, "convert") and hasattr(value, "mode"):  # PIL
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
        if mode is None:
            raise Mismatch(f"a picture has 1, 3 or 4 channels, the input wants {c}")
        arr = np.asarray(value.convert(mode), dtype=np.float32) / 255.0
    else:
        arr = _array(value, wanted)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        x = torch.from_numpy(np.ascontiguousarray(arr))[None]
    elif arr.ndim == 3:
        chw = arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4)
        if not chw and arr.shape[-1] not in (1, 3, 4):
            raise Mismatch(f"expected {wanted} with 1, 3 or 4 channels")
        x = torch.from_numpy(np.ascontiguousarray(arr if chw else arr.transpose(2, 0, 1)))
    else:
        raise Mismatch(f"expected {wanted}")
    x = _channels(x, c)
    if tuple(x.shape[1:]) != (h, w):
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    if norm is not None:
        mean = torch.tensor(norm.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(norm.std, dtype=x.dtype).view(-1, 1, 1)
        return (x.clamp(0, 1) - mean) / std
    return (x.clamp(0, 1) - MEAN) / STD


def _channels(x: torch.Tensor, c: int) -> torch.Tensor:
    have = x.shape[0]
    if have == c:
        return x
    if have == 4:  # drop alpha first
        x, have = x[:3], 3
        if c == 3:
            return x
    if have == 1 and c in (3, 4):
        x = x.expand(3, -1, -1)
        return x if c == 3 else torch.cat([x, torch.ones_like(x[:1])])
    if have == 3 and c == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (x * weights).sum(0, keepdim=True)
    if have == 3 and c == 4:
        return torch.cat([x, torch.ones_like(x[:1])])
    raise Mismatch(f"the image has {have} channels and the input wants {c}")


def _tokens(value: Any, length: int, tokenizer) -> torch.Tensor:
    if isinstance(value, str):
        return torch.tensor(tokenizer.encode(value, length), dtype=torch.long)
    arr = _array(value, "a string (or a list of token ids)")
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise Mismatch("expected a string (or a list of token ids)")
    ids = torch.from_numpy(arr.astype(np.int64))[:length]
    return F.pad(ids, (0, length - len(ids)), value=tokenizer.pad_id)


def _labels(value: Any, shape: list[int | None]) -> torch.Tensor:
    wanted = "an integer label" if not shape else f"{shape[0]} integer labels"
    if isinstance(value, bool):
        raise Mismatch(f"expected {wanted}")
    arr = _array(value, wanted)
    if arr.dtype.kind not in "iu" or arr.ndim != len(shape) or \
            (shape and arr.shape[0] != shape[0]):
        raise Mismatch(f"expected {wanted}")
    return torch.from_numpy(arr.astype(np.int64)) if shape else torch.tensor(int(arr))


def _fixed(value: Any, shape: list[int | None], wanted: str) -> torch.Tensor:
    """A value used as it is, after checking its shape against the input's."""
    arr = _array(value, wanted)
    ok = arr.ndim == len(shape) and \
        all(s is None or s == n for s, n in zip(shape, arr.shape, strict=True))
    if not ok:
        want = ", ".join("?" if s is None else str(s) for s in shape)
        raise Mismatch(f"expected shape [{want}] without the batch axis")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _wave(value: Any) -> torch.Tensor:
    arr = _array(value, "a 1-D waveform").astype(np.float32)
    if arr.ndim == 2:  # several channels: average them (the shorter axis is the channels)
        arr = arr.mean(axis=int(np.argmin(arr.shape)))
    if arr.ndim != 1:
        raise Mismatch("expected a 1-D waveform")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad the last axis to `length`."""
    x = x[..., :length]
    return F.pad(x, (0, length - x.shape[-1]))


def _mel(value: Any, mels: int, frames: int) -> torch.Tensor:
    """An M x F log-mel spectrogram: given as one (M x F array), or made from a waveform."""
    arr = _array(value, "a waveform or an M x F spectrogram")
    if arr.ndim == 2 and arr.shape[0] == mels:
        return _pad_to(torch.from_numpy(arr.astype(np.float32)), frames)
    return _pad_to(log_mel(_wave(arr), mels), frames)
