"""Preprocessing that comes with a pretrained part's folder (torch-free).

An image input that feeds a `pretrained(...)` part whose folder has a `preprocessor_config.json`
(CLIPImageProcessor and the like) is normalised with that file's `image_mean` / `image_std`
instead of the default 0.5 / 0.5, and the file's crop size (else its size) must agree with the
input's H x W. A text input that feeds a pretrained part whose folder has tokenizer files uses
that tokenizer when none is given on the command line.

"Feeds" follows the graph forward from the input to the first pretrained parts it reaches.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mmgraph.ir.graph import Graph
from mmgraph.train.sources import DataError

PREPROCESSOR = "preprocessor_config.json"
MAX_JSON_BYTES = 1 << 20  # a preprocessor config is a few hundred bytes
# Files one of which a saved Hugging Face tokenizer directory always has (tokenize._HF_FILES).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "merges.txt")


@dataclass(frozen=True)
class ImageNorm:
    """How one image input is normalised: (x - mean) / std per channel, from `source`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # the preprocessor_config.json it came from


def read_json(path: Path, cap: int = MAX_JSON_BYTES) -> dict:
    """A small JSON object from a file, or a DataError naming the file."""
    try:
        size = path.stat().st_size
        if size > cap:
            raise DataError(f"{path}: {size:,} bytes is too large for a preprocessor "
                            f"config (at most {cap:,})")
        data = json.loads(path.read_text(encoding="utf-8"))
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _reached_parts(graph: Graph, input_name: str) -> list[str]:
    """The pretrained instances the input reaches first (not looking past them)."""
    users = graph.users()
    seen, found = {input_name}, []
    todo = deque([input_name])
    while todo:
        name = todo.popleft()
        for user in users.get(name, ()):
            if user in seen:
                continue
            seen.add(user)
            node = graph.nodes[user]
            inst = graph.instances.get(node.target) if node.op == "call" else None
            if inst is not None and inst.pretrained is not None:
                if inst.name not in found:
                    found.append(inst.name)
                continue
            todo.append(user)
    return found


def _floats(data: dict, key: str, channels: int, path: Path) -> tuple[float, ...]:
    value = data.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * channels
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(f"{path}: {key} should be a list of numbers, got {value!r}")
    if len(value) != channels:
        raise DataError(f"{path}: {key} has {len(value)} values, but the image input has "
                        f"{channels} channels")
    if key == "image_std" and any(v <= 0 for v in value):
        raise DataError(f"{path}: {key} must be positive, got {value!r}")
    return tuple(float(v) for v in value)


def _size(data: dict) -> tuple[int, int] | None:
    """The H x W the processor gives the model: crop_size if it crops, else size."""
    keys = ("crop_size", "size") if data.get("do_center_crop", True) else ("size",)
    for key in keys:
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value, value
        if isinstance(value, dict):
            if isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
                return value["height"], value["width"]
            if isinstance(value.get("shortest_edge"), int) and key == "size" and \
                    "crop_size" not in data:
                return value["shortest_edge"], value["shortest_edge"]
    return None


def image_norms(graph: Graph, shapes: dict[str, list[int | None]]) -> dict[str, ImageNorm]:
    """For each Image input feeding a pretrained part with a preprocessor_config.json, its
    normalisation; `shapes` gives each input's sizes without the batch axis (C, H, W)."""
    out: dict[str, ImageNorm] = {}
    for name in graph.inputs:
        if graph.nodes[name].type.kind != "Image":
            continue
        c, h, w = (list(shapes[name]) + [None, None, None])[:3]
        norms: dict[str, ImageNorm] = {}
        for part in _reached_parts(graph, name):
            path = Path(graph.instances[part].pretrained.path) / PREPROCESSOR
            if not path.is_file():
                continue
            data = read_json(path)
            size = _size(data)
            if size is not None and h is not None and w is not None and size != (h, w):
                raise DataError(
                    f"spec input '{name}' is {h}x{w} images, but '{part}' was pretrained on "
                    f"{size[0]}x{size[1]} ({path}); give the input H={size[0]}, W={size[1]}")
            norms[part] = ImageNorm(_floats(data, "image_mean", c or 3, path),
                                    _floats(data, "image_std", c or 3, path), str(path))
        distinct = {(n.mean, n.std) for n in norms.values()}
        if len(distinct) > 1:
            raise DataError(f"spec input '{name}' feeds pretrained parts that normalise images "
                            "differently: " + "; ".join(
                                f"'{p}' mean {list(n.mean)} std {list(n.std)} ({n.source})"
                                for p, n in norms.items()))
        if norms:
            out[name] = next(iter(norms.values()))
    return out


def pretrained_tokenizer(graph: Graph) -> str | None:
    """The folder of the tokenizer that comes with the pretrained parts the Tokens inputs
    feed, or None; two different ones are refused (give --tokenizer)."""
    folders: list[str] = []
    for name in graph.inputs:
        if graph.nodes[name].type.kind != "Tokens":
            continue
        for part in _reached_parts(graph, name):
            folder = graph.instances[part].pretrained.path
            if any((Path(folder) / f).is_file() for f in TOKENIZER_FILES) and \
                    folder not in folders:
                folders.append(folder)
    if len(folders) > 1:
        raise DataError("the spec's text inputs feed pretrained parts with different "
                        f"tokenizers ({', '.join(folders)}): choose one with --tokenizer")
    return folders[0] if folders else None
