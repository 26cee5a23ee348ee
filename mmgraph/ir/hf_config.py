"""Reading a local Hugging Face folder's config.json at check time, without torch.

Both `pretrained(PATH)` (the pretrained pass) and the `hf_model` component type a layer from
this file, so both read it the same careful way: a regular file, at most 4 MiB, UTF-8, one
JSON object. Each caller turns a problem into its own diagnostic through `fail`.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from mmgraph.lang.diagnostics import shorten

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a config.json is a few kilobytes

Fail = Callable[[str, "str | None"], NoReturn]


def read_hf_config(folder: Path, fail: Fail, what: str, missing_hint: str) -> dict:
    """`folder`/config.json as a dict. `what` names the folder in messages ("checkpoint
    folder"); `fail(message, hint)` must raise."""
    if not folder.exists():
        fail(f"no {what} {shorten(str(folder), 80)}", missing_hint)
    if not folder.is_dir():
        fail(f"{shorten(str(folder), 80)} is not a folder",
             "name the folder that holds config.json, not a file in it")
    path = folder / "config.json"
    try:
        st = path.stat()
    except OSError:
        fail(f"the {what} has no config.json: {shorten(str(folder), 80)}",
             "a Hugging Face folder holds config.json beside its weights")
    if not stat.S_ISREG(st.st_mode):
        fail(f"{shorten(str(path), 80)} is not a regular file", None)
    if st.st_size > MAX_CONFIG_BYTES:
        fail(f"{shorten(str(path), 80)} is {st.st_size:,} bytes, more than a config.json "
             f"holds (at most {MAX_CONFIG_BYTES:,})", None)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except OSError as exc:
        fail(f"cannot read {shorten(str(path), 80)}: {exc.strerror}", None)
    except UnicodeDecodeError as exc:
        fail(f"{shorten(str(path), 80)} is not UTF-8 text (byte {exc.start})", None)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" \
            if isinstance(exc, json.JSONDecodeError) else ""
        fail(f"{shorten(str(path), 80)} is not valid JSON{where}", None)
    if not isinstance(data, dict):
        fail(f"{shorten(str(path), 80)} holds no JSON object", None)
    return data
