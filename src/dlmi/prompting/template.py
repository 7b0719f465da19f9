"""Templates: fixed text around one learnable span `{prompt}`, with `{input}` filled from data.

A text template is a string such as "{prompt}\\nQuestion: {input}\\nAnswer:"; the output follows
its last character. A chat template is a list of messages ({"role", "content"}) rendered with
the tokenizer's own chat template and its generation prompt, so the output is the assistant's
reply; `{prompt}` may sit in any message. Placeholders are replaced literally (other braces
are text), and each side of the span is tokenised on its own: the span's ids never merge with
their neighbours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dlmi.errors import UsageError

PROMPT, INPUT = "{prompt}", "{input}"


@dataclass(frozen=True)
class Template:
    text: str | None = None  # a text template, or
    messages: tuple[tuple[str, str], ...] | None = None  # chat messages (role, content)

    def __post_init__(self):
        parts = [self.text] if self.messages is None else [c for _, c in self.messages]
        count = sum(p.count(PROMPT) for p in parts)
        if count != 1:
            raise UsageError(f"a template needs exactly one {PROMPT} (found {count}): "
                             'e.g. --template "{prompt} {input}"')

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def uses_input(self) -> bool:
        parts = [self.text] if self.messages is None else [c for _, c in self.messages]
        return any(INPUT in p for p in parts)

    def __str__(self) -> str:
        if self.messages is None:
            return self.text
        return json.dumps([{"role": r, "content": c} for r, c in self.messages])

    def render(self, tokenizer, input_text: str = "") -> tuple[str, str]:
        """The text before and after the span for one input."""
        if self.messages is None:
            text = self.text.replace(INPUT, input_text)
        else:
            text = _render_chat(tokenizer, [(r, c.replace(INPUT, input_text))
                                            for r, c in self.messages])
        # Split on the placeholder after filling the input: an input that itself contains
        # "{prompt}" would be ambiguous, so refuse it.
        if text.count(PROMPT) != 1:
            raise UsageError(f"an input contains {PROMPT!r}: remove it from the data")
        before, after = text.split(PROMPT)
        return before, after

    def ids(self, lm, input_text: str = "") -> tuple[list[int], list[int]]:
        """Token ids before and after the span for one input."""
        before, after = self.render(lm.tokenizer, input_text)
        return lm.encode(before), lm.encode(after)


def _render_chat(tokenizer, messages: list[tuple[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("this model's tokenizer has no chat template: use a text template "
                         '(e.g. --template "{prompt} {input}") or a chat model')
    return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                         tokenize=False, add_generation_prompt=True)


def parse_template(spec: str, chat: bool = False) -> Template:
    """--template: text, a JSON list of messages, or @FILE holding either.
    chat=True puts a text template into one user message of the chat template."""
    if spec.startswith("@"):
        path = Path(spec[1:])
        try:
            spec = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read template file {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        spec = spec[:-1] if spec.endswith("\n") and spec.lstrip().startswith("[") else spec
    if spec.lstrip().startswith("["):
        return Template(messages=_messages(spec))
    if chat:
        return Template(messages=(("user", spec),))
    return Template(text=spec)


def _messages(spec: str) -> tuple[tuple[str, str], ...]:
    try:
        data = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the chat template is not valid JSON ({exc.msg} at character "
                         f"{exc.pos}): give a list of {{\"role\", \"content\"}} objects") from None
    ok = isinstance(data, list) and data and all(
        isinstance(m, dict) and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str) for m in data)
    if not ok:
        raise UsageError('a chat template is a list of {"role": ..., "content": ...} objects '
                         "with string values")
    return tuple((m["role"], m["content"]) for m in data)


def as_template(spec) -> Template:
    """A Template from a Template, a text template, or a list of chat messages (Python API)."""
    if isinstance(spec, Template):
        return spec
    if isinstance(spec, str):
        return parse_template(spec)
    if isinstance(spec, list | tuple):
        return parse_template(json.dumps(list(spec)))
    raise UsageError("a template is text with {prompt}, or a list of chat messages")
