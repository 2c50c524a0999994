"""The caption tokenizer of a from-scratch base: whole words, byte fallback, and the same vocabulary in every process."""

import json
import os
import re
import subprocess
import sys

from synfer.train.diffusion.tokenizer import caption_tokenizer, learn_merges

WORD = r"[^\W\d_]+|\d|[^\s\w]+|_+"  # the tokenizer module's word pattern (CLIP's, less contractions)
CAPTIONS = ["A smiling woman with round glasses", "a naïve café owner, 1920s", "über-cool_face!! frowning man"]
# One process's tokenizer, printed as JSON: run under several hash seeds, it must not change.
SNIPPET = (
    "import json, sys; from synfer.train.diffusion.tokenizer import caption_tokenizer; "
    "t = caption_tokenizer(json.loads(sys.argv[1])); "
    "print(json.dumps([sorted(t.get_vocab().items()), t.tokenize(' '.join(json.loads(sys.argv[1])))]))"
)


def test_every_caption_word_is_one_token_and_other_text_falls_back_to_bytes():
    tokenizer = caption_tokenizer(CAPTIONS, include_prompt_vocabulary=False)
    for words in ("a smiling café owner", "naïve über-cool_face!!"):  # tokens are byte-level strings
        tokens = tokenizer.tokenize(words)
        assert len(tokens) == len(re.findall(WORD, words))
        assert tokenizer.decode(tokenizer.convert_tokens_to_ids(tokens)).strip() == " ".join(re.findall(WORD, words))
    unseen = tokenizer.tokenize("zebra")
    assert len(unseen) > 1 and tokenizer.unk_token not in unseen
    ids = tokenizer("zebra smiling")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zebra smiling"


def test_the_prompt_vocabulary_is_included_unless_asked_not_to():
    assert len(caption_tokenizer([], include_prompt_vocabulary=True)) > len(caption_tokenizer([], include_prompt_vocabulary=False))
    assert caption_tokenizer([]).tokenize("happy")[0].endswith("</w>")


def test_merges_go_by_count_then_alphabetically():
    assert learn_merges(["cd", "ab"]) == [("a", "b</w>"), ("c", "d</w>")]
    assert learn_merges(["yab", "xab"]) == [("a", "b</w>"), ("x", "ab</w>"), ("y", "ab</w>")]


def test_the_same_captions_give_the_same_tokenizer_in_every_process():
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", SNIPPET, json.dumps(CAPTIONS)], env=env, capture_output=True, text=True, check=True)
        outputs.add(run.stdout)
    assert len(outputs) == 1
    vocab, _ = json.loads(outputs.pop())
    assert dict(vocab) == caption_tokenizer(CAPTIONS).get_vocab()
