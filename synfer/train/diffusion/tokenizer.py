"""A CLIP tokenizer for a base trained from scratch, whose BPE vocabulary covers a caption set.

BPE merges are learnt from each distinct word once (word frequencies do not matter, so the result
depends on the vocabulary alone), on CLIP's byte-level alphabet with its ``</w>`` end-of-word
suffix: the most frequent adjacent pair is merged first, ties go to the alphabetically first pair,
until every word is one token. Any other text still tokenizes, byte by byte. The result is a
``transformers.CLIPTokenizer``, saved and loaded like Stable Diffusion's.

The merges are learnt here rather than by the ``tokenizers`` library's ``BpeTrainer``: that trainer
numbers the end-of-word symbols in hash-map order and breaks equal-count ties by those numbers, so
the same captions gave a different vocabulary in every process, and a base made twice from the same
data differed. This learner's only ordering is the explicit one above.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
# CLIP's pre-tokenizer pattern, less its contractions: words, numbers, and runs of other symbols.
_WORDS = re.compile(r"[^\W\d_]+|\d|[^\s\w]+|_+")


def caption_words(captions: Iterable[str]) -> list[str]:
    """The distinct words of ``captions`` (lower case, CLIP's splitting), sorted."""
    words: set[str] = set()
    for caption in captions:
        words.update(_WORDS.findall(str(caption).lower()))
    return sorted(words)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges, in rank order, after which each of ``words`` (byte-level symbols) is one token."""
    symbols = [list(w[:-1]) + [w[-1] + END_OF_WORD] for w in sorted(set(words)) if w]
    counts: Counter[tuple[str, str]] = Counter()
    holders: defaultdict[tuple[str, str], set[int]] = defaultdict(set)  # may keep words that lost the pair
    for index, word in enumerate(symbols):
        for pair in zip(word, word[1:]):
            counts[pair] += 1
            holders[pair].add(index)
    # Max-heap on count, then the alphabetically first pair; entries whose count has moved are stale.
    heap = [(-count, *pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        negative, left, right = heapq.heappop(heap)
        if counts.get((left, right), 0) != -negative:
            continue
        merges.append((left, right))
        changed: set[tuple[str, str]] = set()
        for index in sorted(holders.pop((left, right))):
            word = symbols[index]
            merged = _merge(word, left, right)
            if merged is word:
                continue
            for pair in zip(word, word[1:]):
                counts[pair] -= 1
                changed.add(pair)
            for pair in zip(merged, merged[1:]):
                counts[pair] += 1
                holders[pair].add(index)
                changed.add(pair)
            symbols[index] = merged
        for pair in changed:
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], *pair))
    return merges


def _merge(word: list[str], left: str, right: str) -> list[str]:
    """``word`` with every non-overlapping ``left right`` (from the left) joined; ``word`` itself if none."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out if len(out) < len(word) else word


def caption_tokenizer(captions: Iterable[str], *, include_prompt_vocabulary: bool = True, model_max_length: int = MODEL_MAX_LENGTH):
    """A ``CLIPTokenizer`` in which every word of ``captions`` (and of synfer's prompts) is one token."""
    import unicodedata

    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    words = set(caption_words(captions))
    if include_prompt_vocabulary:
        from ...prompts import prompt_vocabulary

        words.update(caption_words(prompt_vocabulary()))
    # CLIP's tokenizer sees NFC text as UTF-8 bytes, each shown as one printable character.
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    encoded = {to_bytes.pre_tokenize_str(unicodedata.normalize("NFC", w))[0][0] for w in words}
    merges = learn_merges(encoded)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet + [c + END_OF_WORD for c in alphabet] + [left + right for left, right in merges]:
        vocab.setdefault(symbol, len(vocab))  # every merge result is a token, as CLIP's BPE expects
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
