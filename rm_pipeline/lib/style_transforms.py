"""Style changes that leave an answer's content as it is: the shapes both the shortcut probes
(lib/evaluation/probes.py) and the style-neutral training pairs (lib/augmentation.py) are made of.

Only the shapes live here; each caller brings its own wordings, so that the probes' templates and the
training templates stay separate families. Knows nothing of Dagster or of the model.
"""

from __future__ import annotations

import re

# A sentence: from a non-space character to end punctuation followed by space, to a line break, or to the end.
# An abbreviation ("U.S. states") ends one too: good enough to repeat a sentence or make bullets.
SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s)|(?=\n)|\Z)", re.S)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, in order."""
    return [match.span() for match in SENTENCE.finditer(text)]


def sentences(text: str) -> list[str]:
    """Each sentence of ``text`` on one line (its runs of whitespace made single spaces)."""
    return [" ".join(text[start:end].split()) for start, end in sentence_spans(text)]


def padded(text: str, filler: tuple[str, ...], variant: int) -> str:
    """``text`` followed by ``filler`` sentences (from ``filler[variant]`` on, cycling) until it is at least
    twice as long in characters."""
    result, i = text, variant
    while len(result) < 2 * len(text):
        result += " " + filler[i % len(filler)]
        i += 1
    return result


def wrapped(text: str, opening: str, closing: str = "") -> str:
    """``text`` as a paragraph between ``opening`` and ``closing`` (either may be empty)."""
    return "\n\n".join(part for part in (opening, text, closing) if part)


def listed(text: str, heading: str, bullet: str) -> str:
    """``heading``, a blank line, then one line per sentence of ``text``, formatted by ``bullet``
    (``{n}``: the sentence's number from 1, ``{first}``: its first word, ``{rest}``: the others)."""
    lines = []
    for n, sentence in enumerate(sentences(text), start=1):
        first, _, rest = sentence.partition(" ")
        lines.append(bullet.format(n=n, first=first, rest=rest).rstrip())
    return heading + "\n\n" + "\n".join(lines)
