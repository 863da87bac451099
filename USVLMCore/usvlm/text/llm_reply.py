"""What every language-model backend shares: its error type and the reading of its replies.

A reply is untrusted text from a server or a model: it is parsed with bounded JSON (deep nesting
is a `RefinerError`, never a RecursionError) and reduced to usable prompts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from usvlm.errors import InputError, USVLMError
from usvlm.text.banks import unique_texts
from usvlm.text.prompt import validate_prompt

DEFAULT_COUNT = 8


class RefinerError(USVLMError):
    """A language model backend gave no usable answer."""


def snippet(text: str, limit: int = 80) -> str:
    """A short one-line quotation of `text` for a message."""
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


class JSONTooDeep(ValueError):
    """JSON nested deeper than the parser's recursion allows."""


def loads(text: str | bytes) -> Any:
    """json.loads; ValueError for malformed JSON, JSONTooDeep (a ValueError) for deep nesting."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply") from None


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def parse_descriptions(reply: str, count: int = DEFAULT_COUNT) -> list[str]:
    """An LLM reply -> up to `count` descriptions; RefinerError if it holds none.

    Accepts a JSON array of strings, optionally in a ``` fence, with chatter around it, or a JSON
    object whose only value is such an array. Items that are not usable prompts are dropped.
    """
    if not isinstance(reply, str) or not reply.strip():
        raise RefinerError("the reply is empty")
    text = _FENCE.sub("", reply.strip())
    try:
        data = _reply_json(text)
    except JSONTooDeep:
        raise RefinerError("the reply is JSON nested too deeply") from None
    if data is None:
        raise RefinerError(f"the reply is not a JSON list: {snippet(reply)}")
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise RefinerError(f"the reply is not a JSON list of strings: {snippet(reply)}")
    texts = usable_texts(data, count)
    if not texts:
        raise RefinerError(f"the reply has no usable descriptions: {snippet(reply)}")
    return texts


def _reply_json(text: str) -> Any:
    """The reply as JSON, else the JSON of its outermost [...] (chatter around it), else None."""
    try:
        return loads(text)
    except JSONTooDeep:
        raise
    except ValueError:
        start, end = text.find("["), text.rfind("]")
        try:
            return loads(text[start:end + 1]) if 0 <= start < end else None
        except JSONTooDeep:
            raise
        except ValueError:
            return None


def usable_texts(items: list[str], count: int) -> list[str]:
    """The items that are valid prompts, deduplicated, at most `count`."""
    usable = []
    for item in items:
        try:
            usable.append(validate_prompt(item))
        except InputError:
            continue
    return unique_texts(usable)[:count]

