from collections import Counter

import pytest

from synfer.aus import AUVector, prototype
from synfer.errors import ConfigError
from synfer.expressions import Expression
from synfer.models.tiny import tiny_tokenizer
from synfer.prompts import (
    ATTRIBUTE_OPTIONS,
    EXPRESSION_PHRASES,
    LLMEnricher,
    PromptBuilder,
    PromptRequest,
    SubjectAttributes,
    TemplateEnricher,
    au_phrases,
    check_caption,
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_caption_names_expression_aus_and_attributes(tokenizer):
    attributes = SubjectAttributes.draw(seed=0, index=3)
    caption = PromptBuilder(tokenizer).build(Expression.HAPPY, AUVector.parse("6,12"), attributes, "wearing glasses")
    assert caption.startswith("a close-up photo of a")
    assert EXPRESSION_PHRASES[Expression.HAPPY] in caption
    assert "cheeks raised" in caption and "lip corners pulled up" in caption
    assert "wearing glasses" in caption
    for value in (attributes.ethnicity, attributes.pose, attributes.camera):
        assert value in caption
    assert len(tokenizer(caption).input_ids) <= 77


def test_au_phrases_strongest_first_with_intensity_words():
    phrases = au_phrases(AUVector.parse("AU6:1,AU12:5,AU4:3"))
    assert phrases == ["lip corners pulled up strongly", "brows lowered and drawn together", "cheeks raised slightly"]


def test_attributes_are_deterministic_and_balanced():
    assert SubjectAttributes.draw(7, 123) == SubjectAttributes.draw(7, 123)
    draws = [SubjectAttributes.draw(7, i) for i in range(420)]  # 420 = lcm of the option counts
    for name, options in ATTRIBUTE_OPTIONS.items():
        counts = Counter(getattr(d, name) for d in draws)
        assert set(counts) == set(options)
        assert len(set(counts.values())) == 1, name  # exactly balanced
    # Attributes vary independently of each other.
    pairs = Counter((d.age, d.gender) for d in draws)
    assert len(pairs) == len(ATTRIBUTE_OPTIONS["age"]) * len(ATTRIBUTE_OPTIONS["gender"])
    assert SubjectAttributes.draw(8, 5) != SubjectAttributes.draw(7, 5) or SubjectAttributes.draw(8, 6) != SubjectAttributes.draw(7, 6)
    with pytest.raises(ConfigError):
        SubjectAttributes.draw(0, -1)


def test_long_captions_drop_least_important_parts_first(tokenizer):
    attributes = SubjectAttributes.draw(0, 0)
    many_aus = AUVector.parse("1,2,4,5,6,7,9,10,12,15,17,20,23,25,26")
    builder = PromptBuilder(tokenizer, max_tokens=40)
    caption = builder.build(Expression.FEAR, many_aus, attributes)
    assert len(tokenizer(caption).input_ids) <= 40
    assert EXPRESSION_PHRASES[Expression.FEAR] in caption
    assert attributes.camera not in caption and attributes.background not in caption
    # The strongest AUs survive longer than the attributes.
    full = PromptBuilder(tokenizer).build(Expression.FEAR, many_aus, attributes)
    assert len(tokenizer(full).input_ids) <= 77


def test_expression_is_never_dropped(tokenizer):
    long_text = "in a very very long description " * 20
    caption = PromptBuilder(tokenizer, max_tokens=20).build(Expression.DISGUST, prototype(Expression.DISGUST), None, long_text)
    assert EXPRESSION_PHRASES[Expression.DISGUST] in caption
    assert long_text.strip() not in caption


def test_template_without_tokenizer_still_bounds_length():
    enricher = TemplateEnricher(None, max_tokens=30)
    caption = enricher(PromptRequest(Expression.SAD, AUVector.parse("1,4,15"), SubjectAttributes.draw(1, 1)))
    assert enricher.fits(caption) and "looking sad" in caption


def test_check_caption():
    request = PromptRequest(Expression.HAPPY)
    assert check_caption("a smiling woman in a park", request) is None
    assert "does not name" in check_caption("a woman in a park", request)
    assert "also names" in check_caption("a smiling but angry man", request)
    assert check_caption("", request) == "empty"
    assert check_caption("smiling\nsecond line", request) == "more than one line"


class _ScriptedLLM(LLMEnricher):
    """The enricher's checking and fallback, with the model's answers scripted."""

    def __init__(self, answers, fallback):
        self.answers = list(answers)
        self.fallback = fallback
        self.fallbacks = 0

    def generate(self, request):
        return self.answers.pop(0)


def test_llm_enricher_accepts_good_captions_and_falls_back_on_bad_ones(tokenizer):
    template = TemplateEnricher(tokenizer)
    llm = _ScriptedLLM(["a joyful young man smiling at the camera", "a man looking angry"], template)
    request = PromptRequest(Expression.HAPPY, AUVector.parse("6,12"), SubjectAttributes.draw(0, 0))
    assert llm(request) == "a joyful young man smiling at the camera"
    assert llm(request) == template(request) and llm.fallbacks == 1


def test_llm_enricher_loads_a_local_causal_lm_and_checks_its_output(tokenizer, tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    template = TemplateEnricher(tokenizer)
    enricher = LLMEnricher(tmp_path, fallback=template, max_new_tokens=8)
    request = PromptRequest(Expression.SURPRISE, AUVector.parse("1,2,5,26"), SubjectAttributes.draw(0, 2))
    caption = PromptBuilder(tokenizer, enricher=enricher).build(Expression.SURPRISE, request.aus, request.attributes)
    # A random-weight model writes nonsense: the check rejects it and the template answers.
    assert caption == template(request)
    assert enricher.fallbacks == 1
    with pytest.raises(ConfigError, match="no model folder"):
        LLMEnricher(tmp_path / "missing")
