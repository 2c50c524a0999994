"""FERAnno's trainable head: two token branches, a bidirectional cross-attention fusion, a linear classifier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ...errors import ConfigError, ModelLoadError, first_line
from ...expressions import LabelSet, get_label_set
from .recorder import FERAnnoFeatures

if TYPE_CHECKING:
    from .features import FERAnnoFeatureExtractor

class BidirectionalCrossAttention(nn.Module):
    """Each branch attends to the other (both from the same inputs), then each has its own MLP; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm_f = nn.LayerNorm(dim)
        self.norm_a = nn.LayerNorm(dim)
        self.features_from_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_from_features = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp_f = self._mlp(dim, dropout)
        self.mlp_a = self._mlp(dim, dropout)

    @staticmethod
    def _mlp(dim: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, f: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nf, na = self.norm_f(f), self.norm_a(a)
        f = f + self.features_from_attention(nf, na, na, need_weights=False)[0]
        a = a + self.attention_from_features(na, nf, nf, need_weights=False)[0]
        return f + self.mlp_f(f), a + self.mlp_a(a)


class FERAnnoHead(ModelMixin, ConfigMixin):
    """The trainable part of FERAnno: two token branches, a bidirectional cross-attention fusion, a linear head.

    Pooled features become ``blocks × pool²`` tokens (projection + a learned position per token);
    attention maps become one token per text / AU token (projection + a learned token embedding).
    After fusion each branch is mean-pooled and the two are concatenated for the linear classifier
    over ``label_set``.

    Inputs are first standardised with per-dimension statistics of the training set
    (:meth:`fit_normalization`, saved with the weights): at a small timestep the UNet's features and
    attention maps differ between faces by a small fraction of their common offset, which a
    per-token LayerNorm would not remove.

    ``extractor`` is the feature extractor's :meth:`~FERAnnoFeatureExtractor.spec`: the head is only
    valid on features made exactly that way.
    """

    @register_to_config
    def __init__(
        self,
        feature_dims: Sequence[int] = (),
        feature_tokens: int = 4,
        attention_tokens: int = 81,
        attention_dim: int = 64,
        hidden_dim: int = 256,
        num_heads: int = 4,
        dropout: float = 0.1,
        label_set: str = "affectnet8",
        extractor: dict | None = None,
    ):
        super().__init__()
        if not feature_dims:
            raise ConfigError("FERAnnoHead needs the channel count of at least one decoder block")
        if hidden_dim % num_heads:
            raise ConfigError(f"hidden size {hidden_dim} is not divisible by {num_heads} heads")
        num_classes = get_label_set(label_set).num_classes
        for i, dim in enumerate(feature_dims):
            self.register_buffer(f"feature_mean_{i}", torch.zeros(feature_tokens, dim))
            self.register_buffer(f"feature_std_{i}", torch.ones(feature_tokens, dim))
        self.register_buffer("attention_mean", torch.zeros(attention_tokens, attention_dim))
        self.register_buffer("attention_std", torch.ones(attention_tokens, attention_dim))
        self.feature_proj = nn.ModuleList(nn.Linear(d, hidden_dim) for d in feature_dims)
        self.feature_pos = nn.Parameter(torch.zeros(len(feature_dims) * feature_tokens, hidden_dim))
        self.attention_proj = nn.Linear(attention_dim, hidden_dim)
        self.attention_pos = nn.Parameter(torch.zeros(attention_tokens, hidden_dim))
        nn.init.normal_(self.feature_pos, std=0.02)
        nn.init.normal_(self.attention_pos, std=0.02)
        self.fusion = BidirectionalCrossAttention(hidden_dim, num_heads, dropout)
        self.norm = nn.LayerNorm(2 * hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_dim, num_classes)

    @property
    def label_set(self) -> LabelSet:
        return get_label_set(self.config.label_set)

    @classmethod
    def for_extractor(cls, extractor: FERAnnoFeatureExtractor, label_set: LabelSet | str, **kwargs) -> FERAnnoHead:
        """A fresh head shaped for ``extractor``'s features."""
        spec = extractor.spec()
        name = label_set.name if isinstance(label_set, LabelSet) else get_label_set(label_set).name
        return cls(
            feature_dims=spec["feature_dims"],
            feature_tokens=spec["feature_tokens"],
            attention_tokens=spec["attention_tokens"],
            attention_dim=spec["attention_dim"],
            label_set=name,
            extractor=spec,
            **kwargs,
        )

    @torch.no_grad()
    def fit_normalization(self, features: FERAnnoFeatures) -> None:
        """Set the input statistics from training features (mean and std over the images, per dimension)."""

        def fit(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
            values = values.to(torch.float64)
            mean.copy_(values.mean(0))
            # A dimension that never varies maps to 0 instead of amplified rounding noise.
            std.copy_(values.std(0, unbiased=False).clamp_min(1e-6) if len(values) > 1 else torch.ones_like(std))

        for i, values in enumerate(features.features):
            fit(values, getattr(self, f"feature_mean_{i}"), getattr(self, f"feature_std_{i}"))
        fit(features.attention, self.attention_mean, self.attention_std)

    def forward(self, features: Sequence[torch.Tensor], attention: torch.Tensor) -> torch.Tensor:
        """Logits [B, classes] from per-block pooled features [B, pool², C_i] and attention tokens [B, T, D]."""
        dtype = self.feature_pos.dtype
        f = torch.cat(
            [
                proj((x.to(dtype) - getattr(self, f"feature_mean_{i}")) / getattr(self, f"feature_std_{i}"))
                for i, (proj, x) in enumerate(zip(self.feature_proj, features))
            ],
            dim=1,
        )
        f = f + self.feature_pos
        a = self.attention_proj((attention.to(dtype) - self.attention_mean) / self.attention_std) + self.attention_pos
        f, a = self.fusion(f, a)
        pooled = torch.cat([f.mean(dim=1), a.mean(dim=1)], dim=-1)
        return self.classifier(self.drop(self.norm(pooled)))

    def check_compatible(self, extractor: FERAnnoFeatureExtractor) -> None:
        """Refuse features of a different shape than this head was built for."""
        spec = extractor.spec()
        expected = (list(self.config.feature_dims), self.config.feature_tokens, self.config.attention_tokens, self.config.attention_dim)
        actual = (spec["feature_dims"], spec["feature_tokens"], spec["attention_tokens"], spec["attention_dim"])
        if expected != actual:
            raise ModelLoadError(f"this FERAnno head expects features shaped {expected}, the extractor makes {actual}")


def load_head(path: str | Path) -> FERAnnoHead:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{str(path)!r} is not a FERAnno head folder (no config.json)")
    try:
        head = FERAnnoHead.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"could not load the FERAnno head from {str(path)!r}: {first_line(error)}") from None
    if not head.config.extractor or "config" not in head.config.extractor:
        raise ModelLoadError(f"{str(path)!r} is not a FERAnno head (its config has no feature-extractor settings)")
    return head.eval()
