import torch

from synfer.models.tiny import TINY_RESOLUTION, tiny_components, tiny_tokenizer
from synfer.prompts import prompt_vocabulary


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = tiny_components(1), tiny_components(1), tiny_components(2)
    for name in ("unet", "vae", "text_encoder", "au_adapter"):
        sa, sb, sc = (x[name].state_dict() for x in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()), name


def test_building_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_components(0)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_spells_template_words_as_single_tokens_and_handles_any_text():
    tok = tiny_tokenizer()
    assert all(len(tok.tokenize(word)) == 1 for word in prompt_vocabulary())
    ids = tok("a smiling face, ünïcödé & 123").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.model_max_length == 77
    assert tiny_tokenizer().get_vocab() == tok.get_vocab()


def test_components_fit_together():
    c = tiny_components(0)
    assert c["text_encoder"].config.vocab_size == len(c["tokenizer"])
    assert c["unet"].config.cross_attention_dim == c["text_encoder"].config.hidden_size
    scale = 2 ** (len(c["vae"].config.block_out_channels) - 1)
    assert c["unet"].config.sample_size * scale == TINY_RESOLUTION
