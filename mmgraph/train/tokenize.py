"""Tokenizers for `Tokens` inputs: a built-in byte tokenizer and local Hugging Face ones.

Both give `encode(text, length) -> list[int]` of exactly `length` ids (special tokens added,
truncated or right-padded), `ids(text)` (the same before truncation and padding, so cuts can
be counted), `ids_and_offsets(text)` (no special tokens added; each id's character span, for
chat templates' answer masks), plus `vocab_size`, `pad_id` and `eos_id`. Nothing here
downloads: a Hugging Face tokenizer is read only from a local directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mmgraph.train.sources import DataError


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    pad_id: int
    eos_id: int

    def encode(self, text: str, length: int) -> list[int]: ...

    def ids(self, text: str) -> list[int]: ...

    def fit(self, ids: list[int], length: int) -> list[int]: ...

    def ids_and_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...

    def decode(self, ids) -> str: ...


def fit(ids: list[int], length: int, pad_id: int, keep_last: bool = False) -> list[int]:
    """Truncate (keeping the final special token when asked) or right-pad to `length`."""
    if length < 1:
        raise ValueError(f"token length must be at least 1, got {length}")
    if len(ids) > length:
        ids = ids[:length - 1] + [ids[-1]] if keep_last else ids[:length]
    return ids + [pad_id] * (length - len(ids))


class ByteTokenizer:
    """UTF-8 bytes as tokens; needs no files, so every spec can train out of the box.

    Ids: PAD = 0, byte b -> b + 1 (1..256), BOS = 257, EOS = 258. EOS is the largest id any
    encoding contains, so CLIP-style pooling at `argmax(token id)` finds the end of text.
    """

    name = "byte"
    pad_id = 0
    bos_id = 257
    eos_id = 258
    vocab_size = 259
    # how chat templates write BOS and EOS; ids_and_offsets reads them back as 257 and 258
    bos_token, eos_token = "<s>", "</s>"

    def ids(self, text: str) -> list[int]:
        return [self.bos_id] + [b + 1 for b in text.encode("utf-8")] + [self.eos_id]

    def encode(self, text: str, length: int) -> list[int]:
        return self.fit(self.ids(text), length)

    def fit(self, ids: list[int], length: int) -> list[int]:
        """`ids(text)` cut (keeping EOS) or padded to `length`: what encode gives."""
        return fit(ids, length, self.pad_id, keep_last=True)

    def ids_and_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Byte ids with the character span of each; `<s>` and `</s>` are BOS and EOS."""
        specials = {self.bos_token: self.bos_id, self.eos_token: self.eos_id}
        ids, offsets, i = [], [], 0
        while i < len(text):
            special = next((t for t in specials if text.startswith(t, i)), None)
            if special is not None:
                ids.append(specials[special])
                offsets.append((i, i + len(special)))
                i += len(special)
                continue
            for b in text[i].encode("utf-8"):
                ids.append(b + 1)
                offsets.append((i, i + 1))
            i += 1
        return ids, offsets

    def decode(self, ids) -> str:
        """The text of the byte ids, stopping at EOS; special ids and PAD are dropped."""
        out = bytearray()
        for i in (int(x) for x in ids):
            if i == self.eos_id:
                break
            if 1 <= i <= 256:
                out.append(i - 1)
        return out.decode("utf-8", errors="replace")


# Files one of which a saved Hugging Face tokenizer directory always has.
_HF_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
             "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "merges.txt")


class HFTokenizer:
    """A Hugging Face tokenizer read from a local directory (never from the network)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.name = str(path)
        if not path.is_dir():
            raise DataError(f"tokenizer directory {str(path)!r} does not exist "
                            "(use --tokenizer byte, or a local directory saved with "
                            "save_pretrained; nothing is downloaded)")
        if not any((path / f).is_file() for f in _HF_FILES):
            raise DataError(f"{path} has no tokenizer files (expected one of "
                            f"{', '.join(_HF_FILES)})")
        try:
            from transformers import AutoTokenizer
            self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # transformers raises many kinds; all mean "unusable here"
            raise DataError(f"cannot load the tokenizer in {path}: {exc}") from None
        self.vocab_size = len(self.tok)
        pad = self.tok.pad_token_id
        self.eos_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else -1
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id >= 0 else 0)
        self._special = set(self.tok.all_special_ids)
        self.bos_token, self.eos_token = self.tok.bos_token, self.tok.eos_token
        self.bos_id = self.tok.bos_token_id

    def ids(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=True))

    def encode(self, text: str, length: int) -> list[int]:
        return self.fit(self.ids(text), length)

    def fit(self, ids: list[int], length: int) -> list[int]:
        """`ids(text)` cut (keeping a final special token) or padded: what encode gives."""
        keep_last = bool(ids) and ids[-1] in self._special
        return fit(ids, length, self.pad_id, keep_last=keep_last)

    def ids_and_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of text that already holds its special tokens (a rendered chat template)."""
        if not self.tok.is_fast:
            raise DataError(f"tokenizer {self.name} is a slow (Python) tokenizer, which cannot "
                            "say where each token comes from; conversations need its fast "
                            "version (a tokenizer.json in the folder)")
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def make_tokenizer(spec: str | None) -> ByteTokenizer | HFTokenizer:
    """`None` or "byte": the byte tokenizer; anything else: a local tokenizer directory."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)
