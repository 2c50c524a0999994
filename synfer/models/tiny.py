"""A complete tiny SynFER model with random weights, built in code.

It exists for smoke tests and offline CI: it has every component of a real SynFER model (UNet, VAE,
CLIP text encoder and tokenizer, DDIM scheduler, AU adapter) at a size that runs in milliseconds on a
CPU. Its images are noise-like; it says nothing about image quality. The same seed always builds the
same weights.
"""

from __future__ import annotations

import torch
from tokenizers import pre_tokenizers

TINY_NAME = "tiny"
TINY_RESOLUTION = 32
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encode one word: repeatedly merge the adjacent pair with the lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def tiny_tokenizer():
    """An in-memory CLIP tokenizer whose BPE merges make every word of the prompt template one token.

    Like CLIP's, it is byte-level with an end-of-word suffix, so any text tokenizes, and token budgets
    behave roughly as with the real tokenizer. Merges are added word by word, each new merge ranked
    after all earlier ones, so words already spelled as one token keep their spelling: the result is
    deterministic and needs no training run.
    """
    from transformers import CLIPTokenizer

    from ..prompts import prompt_vocabulary

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet + [c + "</w>" for c in alphabet]:
        vocab[symbol] = len(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for word in prompt_vocabulary():
        tokens = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        merged = tokens[0]
        for token in tokens[1:]:
            ranks[(merged, token)] = len(ranks)
            merged += token
            vocab.setdefault(merged, len(vocab))
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(ranks), model_max_length=77)


def tiny_components(seed: int = 0) -> dict:
    """The components of the tiny model: unet, vae, text_encoder, tokenizer, scheduler, au_adapter."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .au_adapter import AUAdapter

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=TINY_RESOLUTION // 2,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            sample_size=TINY_RESOLUTION,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        au_adapter = AUAdapter.from_unet(unet, num_tokens=4, hidden_dim=64)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    for module in (unet, vae, text_encoder, au_adapter):
        module.eval()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "au_adapter": au_adapter,
    }
