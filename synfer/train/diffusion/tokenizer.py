"""A CLIP tokenizer for a base trained from scratch, whose BPE vocabulary covers a caption set.

The merges are learnt with the ``tokenizers`` library's BPE trainer from each distinct word once
(word frequencies do not matter, so the result depends on the vocabulary alone), with CLIP's
byte-level alphabet and ``</w>`` end-of-word suffix. Every word seen becomes one token; any other
text still tokenizes, byte by byte. The result is a ``transformers.CLIPTokenizer``, saved and loaded
like Stable Diffusion's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# CLIP's pre-tokenizer pattern, less its contractions: words, numbers, and runs of other symbols.
_WORDS = re.compile(r"[^\W\d_]+|\d|[^\s\w]+|_+")


def caption_words(captions: Iterable[str]) -> list[str]:
    """The distinct words of ``captions`` (lower case, CLIP's splitting), sorted."""
    words: set[str] = set()
    for caption in captions:
        words.update(_WORDS.findall(str(caption).lower()))
    return sorted(words)


def caption_tokenizer(captions: Iterable[str], *, include_prompt_vocabulary: bool = True, model_max_length: int = MODEL_MAX_LENGTH):
    """A ``CLIPTokenizer`` in which every word of ``captions`` (and of synfer's prompts) is one token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    words = set(caption_words(captions))
    if include_prompt_vocabulary:
        from ...prompts import prompt_vocabulary

        words.update(caption_words(prompt_vocabulary()))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    # A vocabulary large enough that merging stops only when every word is whole.
    trainer = trainers.BpeTrainer(
        vocab_size=2 * len(alphabet) + sum(len(w) for w in words) + 16,
        min_frequency=1,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(sorted(words))], trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    vocab: dict[str, int] = {}
    for symbol in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    for token in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(token, len(vocab))
    for left, right in merges:  # every merge result is a token, as CLIP's BPE expects
        vocab.setdefault(left + right, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
