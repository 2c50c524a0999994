import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from synfer.aus import NUM_AUS, AUVector, stack
from synfer.errors import ConfigError
from synfer.models.au_adapter import AUAdapter, AUAttnProcessor, cross_attention_layers
from synfer.models.sd15 import sd15_unet


def _unet_inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    latents = torch.randn(batch, 4, size, size, generator=g)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return latents, text


def test_attaches_to_every_cross_attention_layer_and_leaves_self_attention(tiny_components):
    unet, adapter = tiny_components["unet"], tiny_components["au_adapter"]
    adapter.attach(unet)
    layers = cross_attention_layers(unet)
    assert len(layers) == len(adapter.config.layer_names) == 7
    assert all(isinstance(m.processor, AUAttnProcessor) for _, m in layers)
    self_attention = [p for name, p in unet.attn_processors.items() if name.endswith("attn1.processor")]
    assert self_attention and not any(isinstance(p, AUAttnProcessor) for p in self_attention)
    adapter.detach()
    assert not any(isinstance(p, AUAttnProcessor) for p in unet.attn_processors.values())


def test_projections_start_as_copies_of_text_projections(tiny_components):
    unet = tiny_components["unet"]
    adapter = AUAdapter.from_unet(unet, num_tokens=3, hidden_dim=16)
    for (_, module), k, v in zip(cross_attention_layers(unet), adapter.to_k_au, adapter.to_v_au):
        assert torch.equal(k.weight, module.to_k.weight) and torch.equal(v.weight, module.to_v.weight)
        assert k.weight.data_ptr() != module.to_k.weight.data_ptr()


def test_au_scale_zero_and_missing_tokens_reproduce_bare_unet_exactly(tiny_components):
    unet, adapter = tiny_components["unet"], tiny_components["au_adapter"]
    latents, text = _unet_inputs(unet)
    t = torch.tensor(500)
    with torch.no_grad():
        bare = unet(latents, t, encoder_hidden_states=text).sample
        adapter.attach(unet)
        values, known = stack([AUVector.parse("6,12"), AUVector.parse("1,2,5,26")])
        tokens = adapter(torch.from_numpy(values), torch.from_numpy(known))
        adapter.set_scale(0.0)
        scaled_off = unet(latents, t, encoder_hidden_states=(text, tokens)).sample
        adapter.set_scale(1.0)
        no_tokens = unet(latents, t, encoder_hidden_states=text).sample
        with_aus = unet(latents, t, encoder_hidden_states=(text, tokens)).sample
    assert torch.equal(bare, scaled_off)
    assert torch.equal(bare, no_tokens)
    assert (with_aus - bare).abs().max() > 1e-4


def test_encoder_shapes_mask_and_null(tiny_components):
    adapter = tiny_components["au_adapter"]
    values, known = stack([AUVector.parse("6,12"), AUVector.parse("AU6:3,AU12:3,AU9:?")])
    tokens = adapter(torch.from_numpy(values), torch.from_numpy(known))
    assert tokens.shape == (2, 4, 32)
    # LayerNorm at the end: each token is normalised.
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 4), atol=1e-5)
    # Unknown differs from known-absent.
    assert not torch.allclose(tokens[0], tokens[1])
    assert adapter.null(3).shape == (3, 4, 32)
    assert torch.count_nonzero(adapter.null_tokens) == 0
    with pytest.raises(ConfigError):
        adapter(torch.zeros(2, NUM_AUS - 1))


def test_save_and_load_as_safetensors(tiny_components, tmp_path):
    adapter = tiny_components["au_adapter"]
    with torch.no_grad():
        adapter.null_tokens.add_(0.5)
    adapter.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AUAdapter.from_pretrained(tmp_path, use_safetensors=True)
    for (name, a), (_, b) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.config.layer_names == adapter.config.layer_names


def test_unet_state_dict_stays_bare_when_attached(tiny_components):
    unet, adapter = tiny_components["unet"], tiny_components["au_adapter"]
    keys = set(unet.state_dict())
    adapter.attach(unet)
    assert set(unet.state_dict()) == keys


def test_refuses_a_unet_it_was_not_built_for(tiny_components):
    adapter = tiny_components["au_adapter"]
    with torch.device("meta"):
        other = sd15_unet()
    with pytest.raises(ConfigError, match="different UNet"):
        adapter.attach(other)


def test_fits_stable_diffusion_15_on_meta():
    unet = sd15_unet("meta")
    adapter = AUAdapter.from_unet(unet)
    adapter.attach(unet)
    layers = cross_attention_layers(unet)
    assert len(layers) == 16
    widths = sorted(m.to_k.out_features for _, m in layers)
    assert widths == [320] * 5 + [640] * 5 + [1280] * 6
    for (_name, module), k, v in zip(layers, adapter.to_k_au, adapter.to_v_au):
        assert isinstance(module.processor, AUAttnProcessor)
        assert k.weight.shape == module.to_k.weight.shape == (module.to_k.out_features, 768)
        assert v.weight.shape == module.to_v.weight.shape
    assert adapter.encoder[-1].out_features == 4 * 768
    # The figure quoted in the README: MLP 82->1024->1024->4*768, LayerNorm, null tokens, and a
    # 768->width key and value projection for each of the 16 layers (widths sum to 12,480).
    mlp = (82 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 3072 + 3072)
    expected = mlp + 2 * 768 + 4 * 768 + 2 * 768 * 12_480
    assert sum(p.numel() for p in adapter.parameters()) == expected == 23_457_280


def test_scale_and_backend_validation(tiny_components):
    adapter = tiny_components["au_adapter"]
    adapter.set_scale(0.5)
    assert adapter.au_scale == 0.5
    with pytest.raises(ConfigError, match="accepted: sdpa, xformers"):
        adapter.set_attention_backend("flash")


def test_attach_is_idempotent_and_processors_are_restored(tiny_components):
    unet, adapter = tiny_components["unet"], tiny_components["au_adapter"]
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    adapter.attach(unet)
    adapter.attach(unet)
    adapter.detach()
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    assert all(t is AttnProcessor2_0 for t in before.values())
