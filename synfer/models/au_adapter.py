"""The AU adapter: AU intensities -> tokens, read by decoupled cross-attention in every cross-attention layer.

The design follows IP-Adapter's decoupled cross-attention. An MLP turns the 41 AU intensities and the
41-slot known mask into ``num_tokens`` tokens of the UNet's cross-attention width. Each cross-attention
layer gets its own ``to_k_au`` / ``to_v_au`` projections, initialised from that layer's text ``to_k`` /
``to_v``, and its output becomes ``text attention + au_scale * AU attention`` before the output projection.
Self-attention is left alone.

The UNet receives the AU tokens the way diffusers passes IP-Adapter tokens: ``encoder_hidden_states`` is a
tuple ``(text_embeddings, au_tokens)``. A plain tensor means "no AU tokens" and gives exactly the bare
UNet's computation, as does ``au_scale == 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..aus import MAX_INTENSITY, NUM_AUS
from ..errors import ConfigError

ATTENTION_BACKENDS = ("sdpa", "xformers")


@dataclass
class _AUState:
    """State shared by one adapter's processors; mutable so that changing the scale needs no re-attach."""

    scale: float = 1.0
    backend: str = "sdpa"


def _attend(query, key, value, mask, backend: str) -> torch.Tensor:
    """Attention over [B, heads, tokens, head_dim] tensors; returns [B, heads, queries, head_dim]."""
    if backend == "xformers" and mask is None:
        import xformers.ops  # optional GPU extra

        out = xformers.ops.memory_efficient_attention(
            query.transpose(1, 2).contiguous(), key.transpose(1, 2).contiguous(), value.transpose(1, 2).contiguous()
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)


def _add_scaled(text: torch.Tensor, au: torch.Tensor, scale: float) -> torch.Tensor:
    """``text + scale * au``, with the same rounding, in fewer passes over memory where it is safe.

    Both are fresh [B, queries, dim] outputs of attention, the size of the layer's activations; the
    AU attention over 4 tokens does little arithmetic, so its cost is memory traffic. Multiplying by 1
    is exact and is skipped; without autograd the two sums are made in place (no new activation-sized
    buffers), since no backward pass needs the attention outputs. With autograd on (semantic guidance,
    training) the out-of-place form keeps them for the backward pass.
    """
    if torch.is_grad_enabled():
        return text + (au if scale == 1 else scale * au)
    if scale != 1:
        au.mul_(scale)
    return text.add_(au)


class AUAttnProcessor:
    """Decoupled cross-attention for one layer: text attention plus ``scale`` times attention over AU tokens.

    Not an ``nn.Module`` on purpose: the projections belong to the :class:`AUAdapter`, so the UNet's own
    ``state_dict`` and ``save_pretrained`` stay those of the bare UNet.
    """

    def __init__(self, to_k_au: nn.Linear, to_v_au: nn.Linear, state: _AUState):
        self.to_k_au = to_k_au
        self.to_v_au = to_v_au
        self.state = state

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        au_tokens = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, au_tokens = encoder_hidden_states

        # Mirrors diffusers' AttnProcessor2_0 step for step, so that without AU tokens (or with scale 0)
        # the result is bit-identical to the bare UNet.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        backend = self.state.backend
        hidden_states = _attend(query, key, value, attention_mask, backend)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        scale = self.state.scale
        if au_tokens is not None and scale != 0:
            au_tokens = au_tokens.to(dtype=self.to_k_au.weight.dtype)
            au_key = self.to_k_au(au_tokens).to(query.dtype)
            au_value = self.to_v_au(au_tokens).to(query.dtype)
            au_key = au_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            au_value = au_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            au_hidden = _attend(query, au_key, au_value, None, backend)
            au_hidden = au_hidden.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            hidden_states = _add_scaled(hidden_states, au_hidden, scale)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, Attention]]:
    """Every cross-attention ``Attention`` module of ``unet``, by module name, in a fixed order."""
    return [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and module.is_cross_attention
    ]


class AUAdapter(ModelMixin, ConfigMixin):
    """AU encoder plus per-layer decoupled cross-attention projections for a diffusers UNet.

    Build one for a UNet with :meth:`from_unet`, or load one with ``from_pretrained``; then
    :meth:`attach` it to the UNet. Its config records the layers it was built for, so loading it for a
    different UNet fails loudly instead of attaching the wrong shapes.
    """

    @register_to_config
    def __init__(
        self,
        cross_attention_dim: int = 768,
        num_tokens: int = 4,
        hidden_dim: int = 1024,
        num_aus: int = NUM_AUS,
        max_intensity: float = MAX_INTENSITY,
        layer_names: list[str] | tuple[str, ...] = (),
        layer_dims: list[int] | tuple[int, ...] = (),
    ):
        super().__init__()
        if len(layer_names) != len(layer_dims):
            raise ConfigError("AUAdapter config: layer_names and layer_dims must have the same length")
        if num_tokens < 1:
            raise ConfigError(f"AUAdapter num_tokens must be >= 1, got {num_tokens}")
        self.encoder = nn.Sequential(
            nn.Linear(2 * num_aus, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_tokens * cross_attention_dim),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)
        # Zero-initialised: before training, the null AU adds nothing to any layer's output.
        self.null_tokens = nn.Parameter(torch.zeros(num_tokens, cross_attention_dim))
        self.to_k_au = nn.ModuleList(nn.Linear(cross_attention_dim, d, bias=False) for d in layer_dims)
        self.to_v_au = nn.ModuleList(nn.Linear(cross_attention_dim, d, bias=False) for d in layer_dims)
        self._state = _AUState()
        self._attached: tuple[nn.Module, dict[str, object]] | None = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_unet(cls, unet: nn.Module, num_tokens: int = 4, hidden_dim: int = 1024) -> AUAdapter:
        """A new adapter for ``unet``; ``to_k_au`` / ``to_v_au`` start as copies of each layer's text projections."""
        layers = cross_attention_layers(unet)
        if not layers:
            raise ConfigError("this UNet has no cross-attention layers to attach an AU adapter to")
        input_dims = {module.to_k.in_features for _, module in layers}
        if len(input_dims) != 1:
            raise ConfigError(f"cross-attention layers disagree on their input width: {sorted(input_dims)}")
        weight = layers[0][1].to_k.weight
        with torch.device(weight.device):
            adapter = cls(
                cross_attention_dim=input_dims.pop(),
                num_tokens=num_tokens,
                hidden_dim=hidden_dim,
                layer_names=[name for name, _ in layers],
                layer_dims=[module.to_k.out_features for _, module in layers],
            )
        if weight.dtype != adapter.dtype:
            adapter.to(dtype=weight.dtype)
        with torch.no_grad():
            for (_, module), to_k_au, to_v_au in zip(layers, adapter.to_k_au, adapter.to_v_au):
                to_k_au.weight.copy_(module.to_k.weight)
                to_v_au.weight.copy_(module.to_v.weight)
        return adapter

    # -- AU encoding ------------------------------------------------------------------------
    def forward(self, intensities: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """AU tokens [B, num_tokens, cross_attention_dim] from intensities [B, 41] (0-5) and a known mask [B, 41]."""
        if intensities.ndim != 2 or intensities.shape[1] != self.config.num_aus:
            raise ConfigError(f"AU intensities must have shape [B, {self.config.num_aus}], got {tuple(intensities.shape)}")
        param = self.null_tokens
        if known is None:
            known = torch.ones_like(intensities, dtype=torch.bool)
        known = known.to(device=param.device, dtype=param.dtype)
        scaled = intensities.to(device=param.device, dtype=param.dtype) / self.config.max_intensity * known
        tokens = self.encoder(torch.cat([scaled, known], dim=1))
        tokens = tokens.view(intensities.shape[0], self.config.num_tokens, self.config.cross_attention_dim)
        return self.norm(tokens)

    def null(self, batch_size: int) -> torch.Tensor:
        """The learned null-AU tokens for classifier-free guidance, [batch_size, num_tokens, dim]."""
        return self.null_tokens.unsqueeze(0).expand(batch_size, -1, -1)

    # -- attaching ----------------------------------------------------------------------------
    @property
    def is_attached(self) -> bool:
        return self._attached is not None

    @property
    def au_scale(self) -> float:
        return self._state.scale

    def set_scale(self, scale: float) -> None:
        """Weight of the AU attention in every layer (0 turns the adapter off exactly)."""
        self._state.scale = float(scale)

    def set_attention_backend(self, backend: str) -> None:
        """``"sdpa"`` (default) or ``"xformers"`` (needs the ``gpu`` extra) for the adapter's layers."""
        if backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"unknown attention backend {backend!r} (accepted: {', '.join(ATTENTION_BACKENDS)})")
        if backend == "xformers":
            try:
                import xformers.ops  # noqa: F401
            except ImportError:
                raise ConfigError("the xformers backend needs xformers: pip install 'synfer[gpu]'") from None
        self._state.backend = backend

    def attach(self, unet: nn.Module) -> None:
        """Install the decoupled cross-attention processors on ``unet``'s cross-attention layers."""
        if self._attached is not None:
            if self._attached[0] is unet:
                return
            self.detach()
        layers = dict(cross_attention_layers(unet))
        expected = list(self.config.layer_names)
        if sorted(layers) != sorted(expected):
            missing = sorted(set(expected) - set(layers))
            extra = sorted(set(layers) - set(expected))
            raise ConfigError(
                f"this AU adapter was built for a different UNet (layers missing: {missing[:3]}, "
                f"unexpected: {extra[:3]}); build one with AUAdapter.from_unet(unet)"
            )
        originals = {}
        for name, dim, to_k_au, to_v_au in zip(expected, self.config.layer_dims, self.to_k_au, self.to_v_au):
            module = layers[name]
            if module.to_k.out_features != dim or module.to_k.in_features != self.config.cross_attention_dim:
                raise ConfigError(
                    f"layer {name} has to_k {module.to_k.in_features}->{module.to_k.out_features}, "
                    f"the adapter expects {self.config.cross_attention_dim}->{dim}"
                )
            originals[name] = module.processor
            module.set_processor(AUAttnProcessor(to_k_au, to_v_au, self._state))
        self._attached = (unet, originals)

    def detach(self) -> None:
        """Restore the processors the UNet had before :meth:`attach`."""
        if self._attached is None:
            return
        unet, originals = self._attached
        for name, module in cross_attention_layers(unet):
            if name in originals:
                module.set_processor(originals[name])
        self._attached = None
