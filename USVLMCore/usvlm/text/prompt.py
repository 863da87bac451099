"""What the engine needs of a prompt: the text as typed, validated, and what to embed for it.

`resolve_prompt` is the fallback resolver (the prompt is its own one-item ensemble); the prompt
banks plug a richer resolver into `Segmenter(resolver=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usvlm.errors import InputError
from usvlm.oneline import one_line_problem
from usvlm.text.terminology import DEFAULT_TERMINOLOGY, Terminology

MAX_PROMPT_CHARS = 500

# Distinct colours for segments whose prompt has no bank colour (Slicer's first label colours).
PALETTE = [(0.93, 0.36, 0.25), (0.30, 0.69, 0.29), (0.22, 0.49, 0.72), (0.99, 0.75, 0.16),
           (0.60, 0.31, 0.64), (0.10, 0.75, 0.80), (0.97, 0.51, 0.75), (0.65, 0.34, 0.16)]


@dataclass(frozen=True)
class ResolvedPrompt:
    text: str  # as typed (stripped)
    name: str  # segment name
    color: tuple[float, float, float]
    terminology: Terminology
    ensemble: tuple[str, ...]  # texts whose mean embedding stands for the prompt
    matched_by: str = "none"  # "exact" | "synonym" | "embedding" | "none"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """Cache key of the text embedding: the ensemble, not the typed text."""
        return "\x1f".join(self.ensemble)


def validate_prompt(text: object) -> str:
    """The stripped prompt, or an InputError for empty, over-long or control-character text."""
    if not isinstance(text, str):
        raise InputError(None, f"prompt must be text, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise InputError(None, "empty prompt: say what to contour, e.g. 'breast mass'")
    if len(stripped) > MAX_PROMPT_CHARS:
        raise InputError(None, f"prompt of {len(stripped)} characters is too long "
                               f"(at most {MAX_PROMPT_CHARS})")
    problem = one_line_problem(stripped)
    if problem:
        raise InputError(None, f"the prompt {problem}; type one line of text")
    if not any(ch.isalnum() for ch in stripped):  # any script is fine ("nódulo tiroideo")
        raise InputError(None, f"the prompt {stripped!r} has no letters or digits: say what to "
                               "contour, e.g. 'breast mass'")
    return stripped


def resolve_prompt(text: str) -> ResolvedPrompt:
    stripped = validate_prompt(text)
    colour = PALETTE[sum(map(ord, stripped.lower())) % len(PALETTE)]
    return ResolvedPrompt(stripped, stripped, colour, DEFAULT_TERMINOLOGY, (stripped,))
