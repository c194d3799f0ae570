"""The language of a text, as a property (ISO 639-1), from ``py3langid`` (a maintained fork of langid.py; its
model ships inside the wheel, nothing is downloaded).

Only a confident answer is given: a text with fewer than :data:`MIN_LETTERS` letters, or whose most likely language
has a normalised probability under :data:`MIN_PROBABILITY`, has no ``language``.
"""

from __future__ import annotations

import functools

#: Letters a text needs before its language is told; characters read at most.
MIN_LETTERS = 20
MAX_CHARS = 20_000
MIN_PROBABILITY = 0.5


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language_of(text: str) -> str | None:
    """The ISO 639-1 code of ``text``'s language (``"en"``), or ``None`` when it cannot be told confidently."""
    sample = text[:MAX_CHARS]
    if sum(c.isalpha() for c in sample) < MIN_LETTERS:
        return None
    code, probability = _identifier().classify(sample)
    return str(code) if probability >= MIN_PROBABILITY else None
