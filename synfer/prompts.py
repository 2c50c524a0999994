"""Prompt enrichment: from (expression, AUs, optional coarse text) to a detailed face-photo caption.

The template enricher is the default and is fully deterministic. Subject attributes (age, gender
presentation, ethnicity, hair, head pose, lighting, background, camera) are drawn from a seed and a
sample index so that every block of consecutive samples uses each option of an attribute exactly once:
a dataset is diverse and balanced without any global bookkeeping.

A caption must fit the text encoder's context (77 CLIP tokens). When it does not, the least
important parts are dropped first; the expression is never dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .aus import AU_TABLE, AUVector
from .errors import ConfigError
from .expressions import Expression, parse_expression
from .registry import Registry

logger = logging.getLogger(__name__)

EXPRESSION_PHRASES: dict[Expression, str] = {
    Expression.NEUTRAL: "with a neutral expression",
    Expression.HAPPY: "smiling happily",
    Expression.SAD: "looking sad",
    Expression.SURPRISE: "looking surprised",
    Expression.FEAR: "looking frightened",
    Expression.DISGUST: "looking disgusted",
    Expression.ANGER: "looking angry",
    Expression.CONTEMPT: "with a contemptuous smirk",
}

# Words that show an enricher's caption still names the requested expression.
EXPRESSION_KEYWORDS: dict[Expression, tuple[str, ...]] = {
    Expression.NEUTRAL: ("neutral", "expressionless", "calm", "blank"),
    Expression.HAPPY: ("happy", "happily", "smile", "smiling", "joy", "joyful", "laugh"),
    Expression.SAD: ("sad", "sadness", "unhappy", "sorrow", "crying", "tearful"),
    Expression.SURPRISE: ("surprise", "surprised", "astonished", "amazed", "shocked"),
    Expression.FEAR: ("fear", "fearful", "afraid", "frightened", "scared", "terrified"),
    Expression.DISGUST: ("disgust", "disgusted", "repulsed", "revulsion"),
    Expression.ANGER: ("anger", "angry", "furious", "mad", "rage"),
    Expression.CONTEMPT: ("contempt", "contemptuous", "smirk", "smirking", "scornful", "disdain"),
}

AGE_GROUPS = ("child", "teenage", "young adult", "adult", "middle-aged", "elderly")
GENDERS = ("man", "woman", "androgynous person")
_NOUNS = {  # (age group, gender presentation) -> subject words
    ("child", "man"): "young boy",
    ("child", "woman"): "young girl",
    ("child", "androgynous person"): "young child",
    ("teenage", "man"): "teenage boy",
    ("teenage", "woman"): "teenage girl",
    ("teenage", "androgynous person"): "teenager",
    ("young adult", "man"): "young man",
    ("young adult", "woman"): "young woman",
    ("young adult", "androgynous person"): "young androgynous person",
}

ATTRIBUTE_OPTIONS: dict[str, tuple[str, ...]] = {
    "age": AGE_GROUPS,
    "gender": GENDERS,
    "ethnicity": (
        "East Asian",
        "Southeast Asian",
        "South Asian",
        "Black",
        "White",
        "Hispanic",
        "Middle Eastern",
    ),
    "hair": (
        "short black hair",
        "long brown hair",
        "curly dark hair",
        "wavy blonde hair",
        "straight red hair",
        "grey hair",
        "a shaved head",
        "braided hair",
        "hair tied in a ponytail",
        "a short beard and short hair",
    ),
    "pose": (
        "frontal view",
        "head turned slightly to the left",
        "head turned slightly to the right",
        "head tilted slightly",
        "three-quarter view",
        "looking slightly up",
        "looking slightly down",
    ),
    "lighting": (
        "soft natural light",
        "studio lighting",
        "dim indoor light",
        "bright sunlight",
        "window light",
        "warm evening light",
    ),
    "background": (
        "plain grey background",
        "blurred city street",
        "office background",
        "living room background",
        "park background",
        "white wall",
        "dark background",
    ),
    "camera": (
        "DSLR photo, 85mm lens",
        "smartphone photo",
        "webcam still",
        "35mm film photograph",
        "candid photo",
    ),
}

# The least important parts are dropped first when a caption is too long.
DROP_ORDER = ("camera", "background", "lighting", "hair", "pose", "ethnicity", "aus", "coarse")


@dataclass(frozen=True)
class SubjectAttributes:
    """Who is in the picture and how it was taken."""

    age: str
    gender: str
    ethnicity: str
    hair: str
    pose: str
    lighting: str
    background: str
    camera: str

    @classmethod
    def draw(cls, seed: int, index: int = 0) -> SubjectAttributes:
        """Balanced, deterministic draw for sample ``index`` of a dataset with base ``seed``.

        For an attribute with k options, indices ``b*k .. b*k+k-1`` use a seeded permutation of the
        options, so each block of k consecutive samples sees every option exactly once. Each attribute
        has its own permutations, so attributes are not correlated with one another or with the index.
        """
        if index < 0:
            raise ConfigError(f"sample index must be >= 0, got {index}")
        chosen = {}
        for attribute_id, (name, options) in enumerate(ATTRIBUTE_OPTIONS.items()):
            k = len(options)
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, attribute_id, index // k]))
            chosen[name] = options[int(rng.permutation(k)[index % k])]
        return cls(**chosen)

    @property
    def subject(self) -> str:
        if (self.age, self.gender) in _NOUNS:
            return _NOUNS[(self.age, self.gender)]
        return f"{self.age} {self.gender}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class PromptRequest:
    """What an enricher is asked to describe."""

    expression: Expression
    aus: AUVector | None = None
    attributes: SubjectAttributes | None = None
    coarse: str | None = None


class PromptEnricher(Protocol):
    """Anything that turns a :class:`PromptRequest` into a caption."""

    def __call__(self, request: PromptRequest) -> str: ...


def _intensity_word(value: float) -> str:
    if value <= 1.5:
        return " slightly"
    if value > 3.5:
        return " strongly"
    return ""


def au_phrases(aus: AUVector) -> list[str]:
    """Plain-words phrases for the active AUs, strongest first (ties in table order)."""
    order = sorted(aus.active, key=lambda name: -aus[name])
    by_name = {au.name: au for au in AU_TABLE}
    return [by_name[name].phrase + _intensity_word(aus[name]) for name in order]


# Photographic captions go with a negative prompt that steers away from drawings and artefacts.
PHOTO_NEGATIVE_PROMPT = "cartoon, drawing, painting, illustration, 3d render, blurry, deformed face, extra limbs, text, watermark"


class TemplateEnricher:
    """The default enricher: a fixed template filled from the request, fitted to the token budget."""

    negative_prompt = PHOTO_NEGATIVE_PROMPT

    def __init__(self, tokenizer=None, max_tokens: int | None = None):
        self.tokenizer = tokenizer
        limit = max_tokens or getattr(tokenizer, "model_max_length", None) or 77
        # Tokenizers without a context length report a huge sentinel value.
        self.max_tokens = min(int(limit), 77) if max_tokens is None else int(max_tokens)

    def parts(self, request: PromptRequest) -> dict[str, list[str]]:
        """The caption's parts in reading order; each part is a list of comma-separated pieces."""
        attrs = request.attributes
        subject = attrs.subject if attrs else "person"
        parts: dict[str, list[str]] = {
            "expression": [f"a close-up photo of a {subject} {EXPRESSION_PHRASES[request.expression]}"],
        }
        if attrs:
            parts["ethnicity"] = [attrs.ethnicity]
            parts["hair"] = [f"with {attrs.hair}"]
        parts["aus"] = au_phrases(request.aus) if request.aus is not None else []
        if request.coarse:
            parts["coarse"] = [request.coarse.strip()]
        if attrs:
            parts["pose"] = [attrs.pose]
            parts["lighting"] = [attrs.lighting]
            parts["background"] = [attrs.background]
            parts["camera"] = [attrs.camera]
        return parts

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return len(re.findall(r"\w+|[^\w\s]", text)) + 2  # rough stand-in with start/end tokens
        return len(self.tokenizer(text, truncation=False).input_ids)

    def fits(self, text: str) -> bool:
        return self.count_tokens(text) <= self.max_tokens

    def __call__(self, request: PromptRequest) -> str:
        parts = self.parts(request)

        def join() -> str:
            return ", ".join(piece for pieces in parts.values() for piece in pieces if piece)

        text = join()
        for name in DROP_ORDER:
            while not self.fits(text) and parts.get(name):
                # AU phrases are ordered strongest first, so the weakest goes first.
                parts[name].pop()
                text = join()
            if self.fits(text):
                break
        if not self.fits(text):
            # Only the expression part is left; simplify it rather than let the encoder cut it.
            parts = {"expression": [f"a photo of a person {EXPRESSION_PHRASES[request.expression]}"]}
            text = join()
        return text


def check_caption(text: str, request: PromptRequest, fits=None) -> str | None:
    """Why ``text`` is not an acceptable caption for ``request``, or None when it is."""
    if not text or not text.strip():
        return "empty"
    if "\n" in text.strip():
        return "more than one line"
    words = set(re.findall(r"[a-z]+", text.lower()))
    if not words & set(EXPRESSION_KEYWORDS[request.expression]):
        return f"does not name the expression {request.expression.label!r}"
    others = {e for e, kws in EXPRESSION_KEYWORDS.items() if e is not request.expression and words & set(kws)}
    if others:
        return f"also names {', '.join(sorted(e.label for e in others))}"
    if fits is not None and not fits(text):
        return "too long for the text encoder"
    return None


class LLMEnricher:
    """Captions written by a local transformers causal LM, checked, with the template as fallback.

    The model is loaded from a local path only (no hub download, no remote code). Decoding is greedy,
    so the same request always gets the same caption.
    """

    INSTRUCTION = (
        "Write one short caption for a realistic close-up photo of a face. Expression: {expression}. "
        "Facial movements: {aus}. Subject: {subject}. Extra: {coarse}. Caption:"
    )

    def __init__(self, path: str | Path, fallback: TemplateEnricher | None = None, max_new_tokens: int = 60, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"LLM enricher: no model folder at {path} (give a local transformers causal LM)")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        self.model.to(device).eval()
        self.fallback = fallback or TemplateEnricher()
        self.max_new_tokens = max_new_tokens
        self.fallbacks = 0

    def generate(self, request: PromptRequest) -> str:
        import torch

        template = self.fallback.parts(request)
        instruction = self.INSTRUCTION.format(
            expression=request.expression.label,
            aus=", ".join(template["aus"]) or "none",
            subject=", ".join(p for k in ("ethnicity", "hair", "pose") for p in template.get(k, [])) or "any",
            coarse=request.coarse or "none",
        )
        inputs = self.tokenizer(instruction, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        text = self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()

    def __call__(self, request: PromptRequest) -> str:
        caption = self.generate(request)
        problem = check_caption(caption, request, fits=self.fallback.fits)
        if problem is None:
            return caption
        self.fallbacks += 1
        logger.info("LLM caption rejected (%s); using the template", problem)
        return self.fallback(request)


class PlainEnricher:
    """The coarse text and the expression's phrase, nothing else: ``"a cartoon face, smiling happily"``.

    For models trained on captions of their own kind (the procedural world's), where the template's
    photographic vocabulary (age, ethnicity, lighting, camera) describes nothing the model has seen.
    Its negative prompt is empty: the contrast of classifier-free guidance is then the unconditional
    the model was trained with (an SD-style negative prompt would steer such a model at random, or
    away from what it draws: the world's captions say "cartoon").
    """

    negative_prompt = ""

    def __init__(self, tokenizer=None, max_tokens: int | None = None):
        self.template = TemplateEnricher(tokenizer, max_tokens)

    def __call__(self, request: PromptRequest) -> str:
        text = f"{(request.coarse or 'a photo of a face').strip()}, {EXPRESSION_PHRASES[request.expression]}"
        if not self.template.fits(text):
            raise ConfigError(f"the caption {text!r} is longer than the text encoder's {self.template.max_tokens} tokens")
        return text


# --captions NAME -> an enricher from the tokenizer (and a token budget).
CAPTION_STYLES: Registry[Callable[..., PromptEnricher]] = Registry("caption style")
CAPTION_STYLES.register("template", TemplateEnricher)
CAPTION_STYLES.register("plain", PlainEnricher)
DEFAULT_CAPTION_STYLE = "template"


def default_negative_prompt(style: str) -> str:
    """The negative prompt that goes with a caption style (``--negative-prompt`` replaces it)."""
    return CAPTION_STYLES[style].negative_prompt


class PromptBuilder:
    """Builds the caption of each sample; the enricher is pluggable, the template is the default.

    ``style`` names a registered enricher (:data:`CAPTION_STYLES`); ``enricher`` replaces it.
    """

    def __init__(
        self, tokenizer=None, enricher: PromptEnricher | None = None, max_tokens: int | None = None, style: str = DEFAULT_CAPTION_STYLE
    ):
        self.style = CAPTION_STYLES.check(style)
        self.template = TemplateEnricher(tokenizer, max_tokens)
        self.enricher = enricher or (self.template if style == "template" else CAPTION_STYLES[style](tokenizer, max_tokens))

    def build(
        self,
        expression: Expression | int | str,
        aus: AUVector | None = None,
        attributes: SubjectAttributes | None = None,
        coarse: str | None = None,
    ) -> str:
        request = PromptRequest(parse_expression(expression), aus, attributes, coarse)
        return self.enricher(request)


def prompt_vocabulary() -> list[str]:
    """Every word the template can write, for building small tokenizers that cover it."""
    texts: list[str] = [*EXPRESSION_PHRASES.values(), *_NOUNS.values(), "a close-up photo of a person with"]
    texts += [au.phrase for au in AU_TABLE] + ["slightly strongly"]
    texts += [option for options in ATTRIBUTE_OPTIONS.values() for option in options]
    texts += [kw for kws in EXPRESSION_KEYWORDS.values() for kw in kws]
    words = {w for text in texts for w in re.findall(r"[a-z]+|[0-9]", text.lower())}
    return sorted(words)

