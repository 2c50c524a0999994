"""Plain-English captions of world faces, from a small fixed vocabulary.

A caption names the identity's visible attributes and, optionally, the expression:
``"a cartoon face of a person with short brown hair, an oval face, light skin and blue eyes, wearing
glasses, on a blue striped background, smiling happily"``. Captions stay under 40 words, well inside
CLIP's 77 tokens, and use only the words of :func:`caption_vocabulary`, so that a tiny in-memory
tokenizer can cover them.
"""

from __future__ import annotations

import re

from ..expressions import Expression, parse_expression
from ..prompts import EXPRESSION_PHRASES  # the phrases synfer's prompt builder uses for each expression
from .identity import (
    BACKGROUND_COLOURS,
    BACKGROUND_PATTERNS,
    EYE_COLOURS,
    FACE_SHAPES,
    GLASSES_COLOURS,
    HAIR_COLOURS,
    HAIR_STYLES,
    HAT_COLOURS,
    SKIN_TONES,
    Identity,
)

MAX_CAPTION_WORDS = 40

HAIR_PHRASES: dict[str, str] = {
    "short": "short {colour} hair",
    "long": "long {colour} hair",
    "fringe": "{colour} hair with a fringe",
    "curly": "curly {colour} hair",
    "bun": "{colour} hair in a bun",
    "bald": "a bald head",
}
PATTERN_WORDS: dict[str, str] = {"plain": "plain {colour}", "gradient": "{colour} gradient", "striped": "{colour} striped",
                                 "dotted": "{colour} dotted"}  # fmt: skip
TEMPLATE = "a cartoon face of a person with {hair}, {face}, {skin} skin and {eyes} eyes{items}, on a {background} background"
_WORD = re.compile(r"[a-z]+")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _items(identity: Identity) -> str:
    items = []
    if identity.glasses is not None:
        items.append(f"{identity.glasses} glasses")
    if identity.hat is not None:
        items.append(f"a {identity.hat} hat")
    if identity.earrings:
        items.append("earrings")
    if not items:
        return ""
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return ", wearing " + listed


def caption(identity: Identity, expression: Expression | int | str | None = None) -> str:
    """A short caption of ``identity``; with ``expression``, its phrase ("smiling happily") is appended."""
    text = TEMPLATE.format(
        hair=HAIR_PHRASES[identity.hair_style].format(colour=identity.hair_colour),
        face=f"{_article(identity.face_shape)} {identity.face_shape} face",
        skin=identity.skin_tone,
        eyes=identity.eye_colour,
        items=_items(identity),
        background=PATTERN_WORDS[identity.background_pattern].format(colour=identity.background),
    )
    if expression is not None:
        text += ", " + EXPRESSION_PHRASES[parse_expression(expression)]
    return text


def caption_words(text: str) -> list[str]:
    """The words of a caption, lower case, punctuation dropped: what :func:`caption_vocabulary` lists."""
    return _WORD.findall(text.lower())


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain, sorted."""
    pieces = [TEMPLATE, *EXPRESSION_PHRASES.values(), *HAIR_PHRASES.values(), *PATTERN_WORDS.values(), "wearing glasses hat earrings and"]
    pieces += [*HAIR_COLOURS, *HAIR_STYLES, *FACE_SHAPES, *SKIN_TONES, *EYE_COLOURS, *BACKGROUND_COLOURS, *BACKGROUND_PATTERNS]
    pieces += [*GLASSES_COLOURS, *HAT_COLOURS, "a an"]
    words = set()
    for piece in pieces:
        words.update(caption_words(re.sub(r"\{\w+\}", " ", piece)))
    return sorted(words)
