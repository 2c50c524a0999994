"""Recording cross-attention maps and block outputs of a diffusers UNet during one forward pass.

diffusers' attention processors do not expose attention probabilities, so :class:`AttentionRecorder`
wraps each cross-attention layer's processor for the duration of the pass: the wrapper recomputes
the probabilities the way diffusers' ``AttnProcessor2_0`` prepares query and key, then delegates, so
the UNet's output is exactly what it is without recording. This is the one module that mirrors
diffusers' attention internals; ``tests/test_feranno.py`` checks it against diffusers' own
``Attention.get_attention_scores`` so that a change in diffusers fails loudly.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn


@dataclass
class FERAnnoFeatures:
    """What one UNet pass yields for a batch.

    Args:
        features: one tensor per decoder block, [B, pool_size², channels of that block].
        attention: [B, tokens, blocks × attention_size²]: for every text and AU token, its attention map
            in each block (mean over heads and layers), flattened.
    """

    features: tuple[torch.Tensor, ...]
    attention: torch.Tensor

    def __len__(self) -> int:
        return self.attention.shape[0]

    def to(self, *args, **kwargs) -> FERAnnoFeatures:
        return FERAnnoFeatures(tuple(f.to(*args, **kwargs) for f in self.features), self.attention.to(*args, **kwargs))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors, for safetensors files."""
        named = {f"features.{i}": f.contiguous() for i, f in enumerate(self.features)}
        named["attention"] = self.attention.contiguous()
        return named

    @classmethod
    def from_tensors(cls, named: dict[str, torch.Tensor]) -> FERAnnoFeatures:
        count = sum(1 for name in named if name.startswith("features."))
        return cls(tuple(named[f"features.{i}"] for i in range(count)), named["attention"])

    @classmethod
    def cat(cls, parts: Sequence[FERAnnoFeatures]) -> FERAnnoFeatures:
        return cls(
            tuple(torch.cat(blocks) for blocks in zip(*(p.features for p in parts))),
            torch.cat([p.attention for p in parts]),
        )


class RecordingProcessor:
    """Wraps a layer's attention processor: computes its cross-attention probabilities, then delegates.

    The delegate produces the output, so the UNet computes exactly what it computes without recording.
    AU tokens (``encoder_hidden_states=(text, au_tokens)``) get their own probabilities through the
    delegate's ``to_k_au`` projection when it has one (the AU adapter's decoupled attention).
    """

    def __init__(self, inner, recorder: AttentionRecorder, block: int):
        self.inner = inner
        self.recorder = recorder
        self.block = block

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        self.recorder.add(self.block, self._probabilities(attn, hidden_states, encoder_hidden_states, temb))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

    def _probabilities(self, attn: Attention, hidden_states, context, temb) -> torch.Tensor:
        """Mean-over-heads attention probabilities [B, queries, tokens] (float32)."""
        au_tokens = None
        if isinstance(context, tuple):
            context, au_tokens = context
        # The same query / key preparation as diffusers' AttnProcessor2_0 (and the AU processor).
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if hidden_states.ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = self._heads(attn, attn.to_q(hidden_states), attn.norm_q)
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        maps = [self._softmax(attn, query, self._heads(attn, attn.to_k(context), attn.norm_k))]
        to_k_au = getattr(self.inner, "to_k_au", None)
        if au_tokens is not None and to_k_au is not None:
            au_key = to_k_au(au_tokens.to(dtype=to_k_au.weight.dtype)).to(query.dtype)
            maps.append(self._softmax(attn, query, self._heads(attn, au_key, None)))
        return torch.cat(maps, dim=-1)

    @staticmethod
    def _heads(attn: Attention, x: torch.Tensor, norm) -> torch.Tensor:
        batch = x.shape[0]
        x = x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
        return norm(x) if norm is not None else x

    @staticmethod
    def _softmax(attn: Attention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
        return scores.softmax(dim=-1).mean(dim=1)


class AttentionRecorder:
    """Collects pooled block outputs and cross-attention maps while installed on a UNet."""

    def __init__(self, unet: nn.Module, blocks: Sequence[int], pool_size: int, attention_size: int):
        self.unet = unet
        self.blocks = list(blocks)
        self.pool_size = pool_size
        self.attention_size = attention_size
        self.features: dict[int, torch.Tensor] = {}
        self.maps: dict[int, list[torch.Tensor]] = {}
        self._spatial: tuple[int, int] | None = None

    def add(self, block: int, probabilities: torch.Tensor) -> None:
        if self._spatial is None:
            raise RuntimeError("cross-attention ran outside a recorded transformer block")
        h, w = self._spatial
        batch, queries, tokens = probabilities.shape
        if queries != h * w:
            raise RuntimeError(f"attention over {queries} queries in a {h}x{w} block")
        grid = probabilities.transpose(1, 2).reshape(batch, tokens, h, w)
        self.maps.setdefault(block, []).append(F.adaptive_avg_pool2d(grid, self.attention_size))

    @contextmanager
    def installed(self):
        handles, swapped = [], []

        def remember_spatial(module, args):
            self._spatial = tuple(args[0].shape[-2:])

        try:
            for index in self.blocks:
                block = self.unet.up_blocks[index]
                handles.append(block.register_forward_hook(self._block_hook(index)))
                for transformer in getattr(block, "attentions", None) or []:
                    handles.append(transformer.register_forward_pre_hook(remember_spatial))
                    for module in transformer.modules():
                        if isinstance(module, Attention) and module.is_cross_attention:
                            swapped.append((module, module.processor))
                            module.set_processor(RecordingProcessor(module.processor, self, index))
            yield self
        finally:
            for module, original in swapped:
                module.set_processor(original)
            for handle in handles:
                handle.remove()
            self._spatial = None

    def _block_hook(self, index: int):
        def hook(module, args, output):
            output = output[0] if isinstance(output, tuple) else output
            pooled = F.adaptive_avg_pool2d(output.float(), self.pool_size)
            self.features[index] = pooled.flatten(2).transpose(1, 2)  # [B, pool², C]

        return hook

    def result(self) -> FERAnnoFeatures:
        missing = [b for b in self.blocks if b not in self.features]
        if missing:
            raise RuntimeError(f"decoder blocks {missing} did not run")
        attention = [torch.stack(self.maps[b]).mean(0).flatten(2) for b in self.blocks if b in self.maps]
        return FERAnnoFeatures(tuple(self.features[b] for b in self.blocks), torch.cat(attention, dim=-1))


def cross_attention_blocks(unet: nn.Module) -> list[int]:
    """Indices of the decoder blocks that contain cross-attention."""
    return [
        i
        for i, block in enumerate(unet.up_blocks)
        if any(isinstance(m, Attention) and m.is_cross_attention for m in block.modules())
    ]
