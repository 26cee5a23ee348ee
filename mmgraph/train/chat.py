"""Conversations (LLaVA-style `conversations` lists) as token ids and the answer tokens to learn.

A conversation is rendered by a chat template: the tokenizer's own (`apply_chat_template`)
when it has one, else a built-in one (BUILTIN_TEMPLATES) or a jinja2 template string that
the spec's `chat_template` train setting names. The tokens a `next_token` loss learns are the
assistant's answers (with the template's end-of-turn text): each answer's characters are
found by rendering the conversation up to before the answer (with the generation prompt) and
up to after it, and the tokens of the whole rendering that overlap those characters are the
targets. System text, user turns and padding are never targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mmgraph.errors import UserError
from mmgraph.suggest import did_you_mean

# LLaVA's "from" values, and the OpenAI / ShareGPT "role" values, to chat-template roles.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}
IMAGE_PLACEHOLDER = "<image>"  # LLaVA marks where the picture goes; mmgraph feeds it as a prefix

_VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the human's "
                  "questions.")
BUILTIN_TEMPLATES = {
    # LLaVA-1.5's conv_vicuna_v1: "SYSTEM USER: q ASSISTANT: a</s>USER: ..."
    "vicuna": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        "{% set turns = messages[1:] %}{% else %}" + _VICUNA_SYSTEM +
        "{% set turns = messages %}{% endif %}"
        "{% for m in turns %}{% if m['role'] == 'user' %} USER: {{ m['content'] }}"
        "{% else %} ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    # LLaVA's pretraining format: the prompt (often only the picture) and then the caption
    "plain": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{{ m['content'] }}{{ eos_token }}{% elif m['content'] %}{{ m['content'] }}\n"
        "{% endif %}{% endfor %}"),
}
DEFAULT_TEMPLATE = "vicuna"  # for tokenizers without a template of their own (LLaVA-1.5's)


class ChatError(UserError):
    """A conversation or chat template that cannot be used, worded for people."""


@dataclass(frozen=True)
class Conversation:
    """The turns of one example: (role, text) pairs, roles as chat templates name them."""

    turns: tuple[tuple[str, str], ...]

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.turns]

    def __str__(self) -> str:  # captions for retrieval metrics, messages
        return "\n".join(f"{role}: {text}" for role, text in self.turns)


def parse_conversation(turns: Any) -> Conversation:
    """A `conversations` list ({"from", "value"} or {"role", "content"} objects) checked;
    raises ValueError saying what is wrong (the source adds file:line)."""
    if not isinstance(turns, list) or not turns:
        raise ValueError('"conversations" must be a list of {"from": ..., "value": ...} objects,'
                         " at least one")
    out = []
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise ValueError(f'"conversations" turn {n} is a {type(turn).__name__}, not a '
                             '{"from": ..., "value": ...} object')
        who = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            raise ValueError(f'"conversations" turn {n} has no "value" string')
        role = ROLES.get(who) if isinstance(who, str) else None
        if role is None:
            raise ValueError(f'"conversations" turn {n}: "from" is {json.dumps(who)}; expected '
                             f"one of {', '.join(json.dumps(r) for r in ROLES)}")
        if IMAGE_PLACEHOLDER in text:
            text = text.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append((role, text))
    return Conversation(tuple(out))


@dataclass(frozen=True)
class Encoded:
    """A text's token ids before padding or truncation, and which of them are targets."""

    ids: list[int]
    targets: list[bool]


def _sandbox():
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


class ChatTemplate:
    """How conversations become text: the tokenizer's own template, a built-in one, or a
    jinja2 string. `setting` is the spec's `chat_template` (None: the tokenizer's own, else
    DEFAULT_TEMPLATE)."""

    def __init__(self, setting: str | None, tokenizer):
        self.tokenizer = tokenizer
        bos = getattr(tokenizer, "bos_id", None)
        # whether `tokenizer.ids` starts every text with BOS (fixed for the tokenizer)
        self.adds_bos = bos is not None and tokenizer.ids("")[:1] == [bos]
        hf = getattr(tokenizer, "tok", None)
        self.own = setting is None and getattr(hf, "chat_template", None) is not None
        if self.own:
            self.name = f"the chat template of tokenizer {tokenizer.name}"
            self.source = None
            return
        name = setting or DEFAULT_TEMPLATE
        if name in BUILTIN_TEMPLATES:
            self.name, self.source = f"built-in chat template {name!r}", BUILTIN_TEMPLATES[name]
        elif "{{" in name or "{%" in name:
            self.name, self.source = "the spec's chat_template", name
        else:
            hint = did_you_mean(name, list(BUILTIN_TEMPLATES))
            raise ChatError(f"chat_template {name!r} is neither a built-in template ("
                            f"{', '.join(BUILTIN_TEMPLATES)}) nor a jinja2 template string"
                            + (f"; {hint}" if hint else ""))
        from jinja2.exceptions import TemplateSyntaxError
        try:
            self.template = _sandbox().from_string(self.source)
        except TemplateSyntaxError as exc:
            raise ChatError(f"chat_template: jinja2 cannot read it: {exc.message} (line "
                            f"{exc.lineno} of the template)") from None
        self.specials = {"bos_token": getattr(tokenizer, "bos_token", "") or "",
                         "eos_token": getattr(tokenizer, "eos_token", "") or ""}

    def __getstate__(self) -> dict:  # a compiled jinja2 template does not cross a spawn
        return {k: v for k, v in self.__dict__.items() if k != "template"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.source is not None:
            self.template = _sandbox().from_string(self.source)

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        from jinja2.exceptions import TemplateError
        try:
            if self.own:
                return self.tokenizer.tok.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt)
            return self.template.render(messages=messages, add_generation_prompt=generation_prompt,
                                        **self.specials)
        except (TemplateError, TypeError, ValueError, IndexError, KeyError) as exc:
            raise ChatError(f"{self.name} cannot render the conversation: {exc}") from None

    def answer_spans(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of the assistant's answers."""
        messages = conv.messages
        text = self.render(messages)
        spans = []
        for k, (role, _) in enumerate(conv.turns):
            if role != "assistant":
                continue
            before = self.render(messages[:k], generation_prompt=True) if k else ""
            through = self.render(messages[:k + 1])
            if not (text.startswith(through) and through.startswith(before)):
                raise ChatError(f"{self.name} does not render the turns before an answer as "
                                "the start of the whole conversation, so the answer's tokens "
                                "cannot be told apart; use chat_template = \"vicuna\", "
                                "\"chatml\" or \"plain\", or a template that does")
            if len(through) > len(before):
                spans.append((len(before), len(through)))
        return text, spans

    def encode(self, conv: Conversation) -> Encoded:
        """Token ids of the rendered conversation; targets: the tokens inside an answer. When
        the tokenizer starts every text with BOS and the template wrote none, BOS comes first,
        as it does for plain text and for a generation prompt (render_prompt)."""
        text, spans = self.answer_spans(conv)
        ids, offsets = self.tokenizer.ids_and_offsets(text)
        targets = [any(s < end and e > start for start, end in spans) for s, e in offsets]
        bos = getattr(self.tokenizer, "bos_id", None)
        if self.adds_bos and ids[:1] != [bos]:
            ids, targets = [bos] + ids, [False] + targets
        return Encoded(ids, targets)


def render_prompt(tokenizer, text: str, template: str | None = None) -> str:
    """`text` as one user turn rendered the way training renders the turns before an answer
    (with the generation prompt): what `mmgraph generate --chat` continues. A BOS the
    template writes is left out when `tokenizer.ids` adds its own, so the prompt's ids are a
    trained conversation's up to its answer."""
    chat = ChatTemplate(template, tokenizer)
    rendered = chat.render([{"role": "user", "content": text}], generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and chat.adds_bos and rendered.startswith(bos):
        rendered = rendered[len(bos):]
    return rendered
