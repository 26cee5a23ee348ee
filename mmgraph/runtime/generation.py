"""Generation from an export folder: `mmgraph.sampling`'s loop over its decoder graphs.

`mmgraph export` writes, for a model that generates, a context graph (run once per request),
a prefill graph (the prompts, left-padded, into a KV cache) and a decode graph (one token
per step, the cache growing outside the graph); see mmgraph/export/decoder.py. `Generator`
runs them on onnxruntime or on TensorRT engines with the same loop and the same numpy token
choice as the torch model's `generate`, so every backend picks the same tokens from the same
logits, sampling included.

What a caller (`mmgraph generate`) needs to know about the export is on the `Generator`
(`open_export(dir).generation`):

- `tokens`: the name of the tokens input; `vocab`: token ids run 0..vocab-1;
- `context`: the context inputs (`TensorSpec`: name, dtype, shape, kind), given by name to
  `generate`, one row for all prompts or one per prompt;
- `max_tokens`: a prompt plus its new tokens take at most this many positions (the export
  range of the tokens dim, and the decoder's max_len less its prefix); `max_batch`: prompts
  per call at most; `max_len`, `prefix`: the decoder's position limit and the positions
  (visual tokens) before the prompt.

Every mistake a caller can make is an `InputError` naming the input or setting, before any
graph runs: a token id outside the vocabulary, a prompt too long for the export, a context
input of the wrong size, an unknown stop token or setting.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import ValidationError

from mmgraph import sampling
from mmgraph.errors import InputError
from mmgraph.runtime.manifest import ExportFolder, problems
from mmgraph.runtime.session import Session, TensorSpec, _as_numpy, check_choices, part_session
from mmgraph.suggest import did_you_mean

MASK = "attention_mask"  # the names mmgraph/export/decoder.py gives the decoder's tensors
PAST, PRESENT, CROSS = "past_key_values.", "present.", "cross."


class Generator:
    """The decoder graphs of an export folder, and the generation loop over them."""

    def __init__(self, folder: ExportFolder, backend: str = "onnxruntime",
                 precision: str = "fp32", providers=None):
        check_choices(backend, precision)
        section = folder.manifest.generate
        if section is None:
            raise InputError(f"{folder.path} holds no decoder graphs")
        self.folder, self.section = folder, section
        self.backend, self.precision, self.providers = backend, precision, providers
        self.tokens, self.logits, self.vocab = section.tokens, section.logits, section.vocab
        self.max_len, self.prefix = section.max_len, section.prefix
        self.chat_template = section.chat_template
        dims = folder.manifest.dims
        self.ranges = {name: r.model_dump() for name, r in {**dims, **section.dims}.items()}
        if section.context is None:
            self.context: list[TensorSpec] = []
        else:
            by_name = {i.name: i for i in section.context.inputs}
            self.context = [TensorSpec.of(by_name[n]) for n in section.context_inputs]
        tokens_range = self.ranges.get(section.tokens_dim)
        self.max_tokens = tokens_range["max"] if tokens_range else None
        if self.max_len is not None and self.prefix is not None:
            room = self.max_len - self.prefix
            self.max_tokens = room if self.max_tokens is None else min(self.max_tokens, room)
        batch = section.batch_dim
        self.max_batch = batch if isinstance(batch, int) else self.ranges.get(batch, {}).get(
            "max")
        self._sessions: dict[str, Session] | None = None

    # ------------------------------------------------------------------ sessions
    def sessions(self) -> dict[str, Session]:
        """context, prefill and decode sessions, opened (and their files verified) once."""
        if self._sessions is None:
            graphs = {"prefill": self.section.prefill, "decode": self.section.decode}
            if self.section.context is not None:
                graphs["context"] = self.section.context
            self._sessions = {key: part_session(self.folder, part, self.ranges, self.backend,
                                                self.precision, self.providers)
                              for key, part in graphs.items()}
        return self._sessions

    # ------------------------------------------------------------------ checks
    def _settings(self, given: dict) -> sampling.Sampling:
        known = list(sampling.Sampling.model_fields)
        for key in given:
            if key not in known:
                names = [c.name for c in self.context] + known
                hint = did_you_mean(key, names)
                raise InputError(f"generate has no input or sampling setting '{key}'"
                                 + (f"; {hint}" if hint else
                                    f"; it takes: {', '.join(names)}"))
        try:
            return sampling.Sampling(**given)
        except ValidationError as exc:
            raise InputError(f"sampling settings: {problems(exc)}") from None

    def _rows(self, tokens) -> list[list[int]]:
        where = f"input '{self.tokens}'"
        try:
            array = tokens.tolist() if hasattr(tokens, "tolist") else tokens
            rows = [[int(t) for t in row] for row in array]
        except (TypeError, ValueError):
            raise InputError(f"{where}: give a list of prompts, each a list of token ids "
                             "(or a [B, T] array)") from None
        if not rows or any(not row for row in rows):
            raise InputError(f"{where}: every prompt needs at least one token")
        return rows

    def check(self, rows: list[list[int]], settings: sampling.Sampling, pad_id: int) -> None:
        where = f"input '{self.tokens}'"
        sampling.check_ids(where, rows, self.vocab)
        sampling.check_ids("stop tokens", [settings.stop], self.vocab)
        if not 0 <= pad_id < self.vocab:
            raise InputError(f"pad_id {pad_id} is outside the vocabulary 0..{self.vocab - 1}")
        if self.max_batch is not None and len(rows) > self.max_batch:
            raise InputError(f"{where}: {len(rows)} prompts, but the export takes at most "
                             f"{self.max_batch} at once (its batch range): split them")
        longest = max(len(r) for r in rows)
        need = longest + settings.max_new_tokens - 1  # the last new token is never fed back
        if self.max_tokens is not None and need > self.max_tokens:
            raise InputError(
                f"{where}: a prompt of {longest} tokens and max_new_tokens="
                f"{settings.max_new_tokens} need {need} token positions, over the "
                f"{self.max_tokens} this export takes (dim {self.section.tokens_dim}"
                f"{'' if self.max_len is None else f', max_len {self.max_len}'}): shorten "
                "the prompt, ask for fewer tokens, or re-export with a larger range")

    def _context_feed(self, given: dict, batch: int) -> dict[str, np.ndarray]:
        """The context inputs, one row repeated to every prompt."""
        feed = {}
        for spec in self.context:
            if spec.name not in given:
                raise InputError(f"generating needs input '{spec.name}' "
                                 f"({spec.kind or ''}{list(spec.shape)}, {spec.dtype})")
            array = _as_numpy(spec.name, given[spec.name])
            if array.ndim and array.shape[0] == 1 and batch > 1:
                array = np.repeat(array, batch, axis=0)
            if array.ndim == 0 or array.shape[0] != batch:
                raise InputError(f"input '{spec.name}' has "
                                 f"{array.shape[0] if array.ndim else 0} rows for {batch} "
                                 "prompts: give one, or one per prompt")
            feed[spec.name] = array
        return feed

    # ------------------------------------------------------------------ the loop
    def generate(self, tokens, *, on_token: Callable[[int, int], None] | None = None,
                 pad_id: int = 0, **inputs) -> list[list[int]]:
        """The new token ids of each prompt in `tokens` (a list of id lists, or [B, T]).

        The same as the torch model's `generate`: the other keyword arguments are the
        context inputs by name (`image=...`: one row for all prompts or one per prompt) and
        the `mmgraph.sampling.Sampling` settings (max_new_tokens, temperature, top_k, top_p,
        repetition_penalty, stop, seed); `on_token(row, id)` streams the tokens.
        """
        names = {c.name for c in self.context}
        context = {k: inputs.pop(k) for k in list(inputs) if k in names}
        settings = self._settings(inputs)
        rows = self._rows(tokens)
        self.check(rows, settings, pad_id)
        feed = self._context_feed(context, len(rows))
        sessions = self.sessions()
        values: dict[str, np.ndarray] = {}
        if "context" in sessions:
            values = sessions["context"].run(**feed)
        cache: dict[str, np.ndarray] = {}
        fed: dict[str, np.ndarray] = {}  # this step's token ids and attention mask

        def source(name: str) -> tuple[dict[str, np.ndarray], str]:
            """Where a graph input comes from: (the table holding it, its key there)."""
            if name == self.tokens:
                return fed, "ids"
            if name == MASK:
                return fed, "mask"
            if name.startswith(PAST):
                return cache, PRESENT + name.removeprefix(PAST)
            if name.startswith(CROSS):
                return cache, name
            return values, name

        prefill_session, decode_session = sessions["prefill"], sessions["decode"]
        prefill_plan = [(s.name, source(s.name)) for s in prefill_session.inputs]
        decode_plan = [(s.name, source(s.name)) for s in decode_session.inputs]

        def feed_of(plan, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
            fed.update(ids=ids, mask=mask)
            return {name: table[key] for name, (table, key) in plan}

        def logits_of(out: dict[str, np.ndarray]) -> np.ndarray:
            cache.update({k: v for k, v in out.items() if k != self.logits})
            return np.asarray(out[self.logits][:, -1], dtype=np.float32)

        def prefill(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return logits_of(prefill_session.run(**feed_of(prefill_plan, ids, mask)))

        def decode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            # no validate per step: the request was checked up front (check, _context_feed,
            # the prefill's run) and every decode input is a token the loop chose, the mask
            # it grew, or an output of the graphs themselves
            return logits_of(decode_session.run_trusted(feed_of(decode_plan, ids, mask)))

        return sampling.generate(prefill, decode, rows, settings, pad_id=pad_id,
                                 on_token=on_token)
