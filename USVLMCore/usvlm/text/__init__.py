"""Text side of USVLM: terminology, prompt banks, prompt resolution, the refiner, zero-shot.

- `terminology`: coded segment terminology (Slicer and DICOM SEG).
- `prompt`: `ResolvedPrompt`, basic prompt validation and the fallback resolver.
- `banks`: `load_banks()` / `default_banks()` -> `BankSet` of per-organ `Bank`s.
- `resolve`: `PromptResolver(banks, encode_text, organ)(text)` -> `ResolvedPrompt`
  (matched_by "exact" | "synonym" | "embedding" | "none").
- `refiner`: `Refiner(backend="bank" | "http" | "hf").refine(text, organ, style)` -> descriptions.
- `zero_shot`: `class_ensembles(organ, "refined" | "bare")`, `ZeroShot(ensembles, encode_text)`.

Names are imported lazily, so `usvlm.text.terminology` users do not pay for torch or jsonschema.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Bank": "banks", "BankSet": "banks", "Structure": "banks", "ClassEntry": "banks",
    "load_bank": "banks", "load_banks": "banks", "default_banks": "banks", "prompt_dir": "banks",
    "ResolvedPrompt": "prompt",
    "PromptResolver": "resolve", "resolve_prompt": "resolve", "validate_prompt": "prompt",
    "Refiner": "refiner", "Refinement": "refiner", "RefinerError": "refiner",
    "RefinerFallbackWarning": "refiner", "refine": "refiner",
    "ZeroShot": "zero_shot", "class_ensembles": "zero_shot", "zero_shot_classifier": "zero_shot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
