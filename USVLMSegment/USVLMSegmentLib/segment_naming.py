"""Prompts of one run and the names of the segments they become (stdlib only, Python 3.9).

Existing segments are never replaced unless the user asked (`overwrite`); a segment that the
user edited is never replaced at all (see segment_history.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Sequence

# Several prompts in one run: one per line or separated by ";" (commas belong to descriptions
# such as "oval, circumscribed mass"). The engine checks each prompt.
_PROMPT_SEPARATORS = re.compile(r"[;\n]+")


class PromptError(ValueError):
    """The prompt box holds no prompt."""


def split_prompts(text: str) -> List[str]:
    parts = [p.strip() for p in _PROMPT_SEPARATORS.split(text or "")]
    parts = [p for p in parts if p]
    if not parts:
        raise PromptError("empty prompt: say what to contour, e.g. 'breast mass'")
    return parts


def unique_name(name: str, existing: Iterable[str]) -> str:
    """`name`, or `name 2`, `name 3`, ... when a segment of that name exists (case-insensitive)."""
    taken = {e.casefold() for e in existing}
    if name.casefold() not in taken:
        return name
    n = 2
    while f"{name} {n}".casefold() in taken:
        n += 1
    return f"{name} {n}"


@dataclass(frozen=True)
class SegmentPlan:
    name: str
    replace: bool  # True: write into the existing segment of that name


def plan_segments(names: Sequence[str], existing: Sequence[str], overwrite: bool,
                  protected: Iterable[str] = ()) -> List[SegmentPlan]:
    """Names for the new segments. Existing segments are kept unless `overwrite`; then a segment
    of the same name is replaced, except one in `protected` (edited by hand since the model wrote
    it), which gets a new name instead. Two prompts giving the same name get distinct segments."""
    plans: List[SegmentPlan] = []
    taken = list(existing)
    keep = {p.casefold() for p in protected}
    replaceable = {e.casefold() for e in existing} - keep
    replaced: set = set()
    for name in names:
        key = name.casefold()
        if overwrite and key in replaceable and key not in replaced:
            replaced.add(key)
            plans.append(SegmentPlan(name, True))
            continue
        plans.append(SegmentPlan(unique_name(name, taken + [p.name for p in plans]), False))
    return plans
