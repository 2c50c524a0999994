"""FERAnno: label a face from the diffusion model's own features.

SynFER's annotator reads the frozen UNet instead of training a new backbone. An image is encoded to a
latent, noised to a small timestep (t=1 by default: nearly clean, so the features describe *this*
image) and passed once through the UNet with a neutral prompt and the image's AUs (the adapter's null
AU when they are unknown). Forward hooks collect

- the output of chosen decoder (``up_blocks``) blocks, average-pooled to a small grid, and
- the cross-attention maps of the same blocks (text tokens and AU tokens), averaged over heads and
  layers and pooled to a fixed size. diffusers' processors do not expose attention probabilities,
  so a recording wrapper is installed around each processor for the duration of the pass only; it
  leaves the UNet's output exactly as it was.

:class:`FERAnnoHead` fuses the two branches with a bidirectional cross-attention block and classifies
the result over a label set. Only the head is trained (``synfer train-annotator``); on disk it is a
diffusers-style folder (``config.json`` + safetensors) whose config names the UNet, its weight hash,
the timestep, the blocks and the label set, so it can only be paired with the UNet it was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import ConfigError, ModelLoadError, first_line
from ..expressions import LabelSet, get_label_set
from ..models.fingerprint import json_sha256, module_sha256
from .registry import LabelBatch

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "a close-up photo of a face"
FEATURES_FORMAT = "synfer-feranno-features"


@dataclass(frozen=True)
class FeatureConfig:
    """How the UNet is read. Every field changes the features, so all of them are saved with a head.

    Args:
        up_blocks: decoder block indices to read; ``None`` means every decoder block with cross-attention.
        timestep: the diffusion timestep the latent is noised to (DDPM forward process).
        pool_size: each block's feature map is average-pooled to ``pool_size`` x ``pool_size`` tokens.
        attention_size: each cross-attention map is pooled to ``attention_size`` x ``attention_size``.
        prompt: the neutral caption the UNet is conditioned on.
        resolution: images are resized to this square size first; ``None`` is the model's native size.
        use_aus: condition on the image's AUs when they are known (the null AU otherwise).
        au_scale: AU attention weight during the pass.
        noise_seed: seed of the noise added to every latent (the same noise for every image, so that an
            image's features do not depend on the batch it is in).
    """

    up_blocks: tuple[int, ...] | None = None
    timestep: int = 1
    pool_size: int = 2
    attention_size: int = 8
    prompt: str = DEFAULT_PROMPT
    resolution: int | None = None
    use_aus: bool = True
    au_scale: float = 1.0
    noise_seed: int = 0

    def __post_init__(self):
        if self.up_blocks is not None:
            if not self.up_blocks:
                raise ConfigError("give at least one decoder block to read (e.g. 1,2,3)")
            if len(set(self.up_blocks)) != len(self.up_blocks):
                raise ConfigError(f"decoder blocks repeat: {list(self.up_blocks)}")
            object.__setattr__(self, "up_blocks", tuple(int(b) for b in self.up_blocks))
        if self.timestep < 0:
            raise ConfigError(f"the FERAnno timestep must be >= 0, got {self.timestep}")
        if self.pool_size < 1 or self.attention_size < 1:
            raise ConfigError("pool and attention-map sizes must be >= 1")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"resolution must be >= 8, got {self.resolution}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["up_blocks"] = list(self.up_blocks) if self.up_blocks is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown FERAnno feature settings {unknown} (accepted: {', '.join(sorted(known))})")
        data = dict(data)
        if data.get("up_blocks") is not None:
            data["up_blocks"] = tuple(data["up_blocks"])
        return cls(**data)


def parse_blocks(text: str | None) -> tuple[int, ...] | None:
    """``"1,2,3"`` -> (1, 2, 3); ``None`` or ``"auto"`` -> None (every decoder block with cross-attention)."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"decoder blocks must be comma-separated indices such as 1,2,3, got {text!r}") from None


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

    def to(self, *args, **kwargs) -> "FERAnnoFeatures":
        return FERAnnoFeatures(tuple(f.to(*args, **kwargs) for f in self.features), self.attention.to(*args, **kwargs))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors, for safetensors files."""
        named = {f"features.{i}": f.contiguous() for i, f in enumerate(self.features)}
        named["attention"] = self.attention.contiguous()
        return named

    @classmethod
    def from_tensors(cls, named: dict[str, torch.Tensor]) -> "FERAnnoFeatures":
        count = sum(1 for name in named if name.startswith("features."))
        return cls(tuple(named[f"features.{i}"] for i in range(count)), named["attention"])

    @classmethod
    def cat(cls, parts: Sequence["FERAnnoFeatures"]) -> "FERAnnoFeatures":
        return cls(
            tuple(torch.cat(blocks) for blocks in zip(*(p.features for p in parts))),
            torch.cat([p.attention for p in parts]),
        )


# -- recording cross-attention maps ------------------------------------------------------------------


class _RecordingProcessor:
    """Wraps a layer's attention processor: computes its cross-attention probabilities, then delegates.

    The delegate produces the output, so the UNet computes exactly what it computes without recording.
    AU tokens (``encoder_hidden_states=(text, au_tokens)``) get their own probabilities through the
    delegate's ``to_k_au`` projection when it has one (the AU adapter's decoupled attention).
    """

    def __init__(self, inner, recorder: "_Recorder", block: int):
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


class _Recorder:
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
                            module.set_processor(_RecordingProcessor(module.processor, self, index))
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


# -- feature extraction ------------------------------------------------------------------------------


class FERAnnoFeatureExtractor:
    """One noised UNet pass per image; returns :class:`FERAnnoFeatures`.

    Args:
        pipe: a :class:`~synfer.pipelines.pipeline_synfer.SynFERPipeline` (or any pipeline with vae,
            text_encoder, tokenizer, unet, scheduler and optionally au_adapter). It is only read.
        config: :class:`FeatureConfig`.
        model: how to load ``pipe`` again (``{"name", "adapter", "seed"}``, as ``load_pipeline`` takes
            them); saved with a head so that ``FERAnno.from_pretrained`` can rebuild the extractor.
    """

    def __init__(self, pipe, config: FeatureConfig = FeatureConfig(), model: dict | None = None):
        self.pipe = pipe
        unet = pipe.unet
        with_attention = cross_attention_blocks(unet)
        blocks = config.up_blocks if config.up_blocks is not None else tuple(with_attention)
        for index in blocks:
            if not 0 <= index < len(unet.up_blocks):
                raise ConfigError(f"decoder block {index} does not exist (this UNet has blocks 0..{len(unet.up_blocks) - 1})")
        if not set(blocks) & set(with_attention):
            raise ConfigError(
                f"decoder blocks {list(blocks)} have no cross-attention, so there are no attention maps to read "
                f"(blocks with cross-attention: {with_attention})"
            )
        resolution = config.resolution or unet.config.sample_size * pipe.vae_scale_factor
        if resolution % pipe.vae_scale_factor:
            raise ConfigError(f"resolution must be a multiple of {pipe.vae_scale_factor}, got {resolution}")
        # The DDPM forward process with the model's own beta schedule: how the UNet saw noised latents in
        # training, independent of the sampler the pipeline is set up with.
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        steps = self.noise_scheduler.config.num_train_timesteps
        if config.timestep >= steps:
            raise ConfigError(f"the FERAnno timestep must be below {steps}, got {config.timestep}")
        self.config = FeatureConfig(**{**config.to_dict(), "up_blocks": tuple(blocks), "resolution": resolution})
        self.model = dict(model or {})
        self._attention_blocks = [b for b in blocks if b in with_attention]
        self._text: torch.Tensor | None = None
        self._spec: dict | None = None

    # -- shapes --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def feature_dims(self) -> list[int]:
        return [self.pipe.unet.up_blocks[b].resnets[-1].out_channels for b in self.config.up_blocks]

    @property
    def num_attention_tokens(self) -> int:
        adapter = self.pipe.au_adapter
        return self.pipe.tokenizer.model_max_length + (adapter.config.num_tokens if adapter is not None else 0)

    @property
    def attention_dim(self) -> int:
        return len(self._attention_blocks) * self.config.attention_size**2

    def spec(self) -> dict:
        """Everything that decides the features: settings, shapes, model identity and weight hashes."""
        if self._spec is None:
            adapter = self.pipe.au_adapter
            self._spec = {
                "config": self.config.to_dict(),
                "model": self.model,
                "dtype": str(self.dtype).removeprefix("torch."),
                "unet_sha256": module_sha256(self.pipe.unet),
                "au_adapter_sha256": module_sha256(adapter) if adapter is not None else None,
                "text_encoder_sha256": module_sha256(self.pipe.text_encoder),
                "vae_sha256": module_sha256(self.pipe.vae),
                "feature_dims": self.feature_dims,
                "feature_tokens": self.config.pool_size**2,
                "attention_tokens": self.num_attention_tokens,
                "attention_dim": self.attention_dim,
            }
        return self._spec

    def fingerprint(self) -> str:
        return json_sha256(self.spec())

    # -- the pass ------------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_embeds(self) -> torch.Tensor:
        """The neutral prompt's text embeddings [1, tokens, dim] (encoded once)."""
        if self._text is None:
            tokens = self.pipe.tokenizer(
                [self.config.prompt],
                padding="max_length",
                max_length=self.pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            self._text = self.pipe.text_encoder(tokens.input_ids.to(self.pipe.text_encoder.device))[0]
        return self._text.to(device=self.device, dtype=self.dtype)

    def _au_tokens(self, batch: int, aus: torch.Tensor | None, known: torch.Tensor | None) -> torch.Tensor | None:
        adapter = self.pipe.au_adapter
        if adapter is None:
            return None
        null = adapter.null(batch)
        if not self.config.use_aus or aus is None:
            return null
        known = torch.ones_like(aus, dtype=torch.bool) if known is None else known.bool()
        known = known.to(adapter.device)
        tokens = adapter(aus.to(adapter.device), known)
        # An image with no known AU at all is treated as unconditioned, as in classifier-free guidance.
        return torch.where(known.any(dim=1)[:, None, None], tokens, null)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] at the extractor's resolution (float32)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"expected images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        size = self.config.resolution
        images = images.float()
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of images [B, 3, H, W] in [0, 1] (the distribution's mode: no sampling noise)."""
        images = self.resize(images.to(device=self.pipe.vae.device))
        pixels = (images * 2 - 1).to(self.pipe.vae.dtype)
        latents = self.pipe.vae.encode(pixels).latent_dist.mode()
        return latents * self.pipe.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, aus: torch.Tensor | None = None, au_known: torch.Tensor | None = None
    ) -> FERAnnoFeatures:
        """Features of images [B, 3, H, W] in [0, 1]; ``aus`` [B, 41] intensities with ``au_known`` [B, 41]."""
        latents = self.encode_latents(images).to(self.dtype)
        batch = latents.shape[0]
        generator = torch.Generator("cpu").manual_seed(self.config.noise_seed)
        noise = torch.randn(latents.shape[1:], generator=generator).expand_as(latents)
        timesteps = torch.full((batch,), self.config.timestep, dtype=torch.long)
        noisy = self.noise_scheduler.add_noise(latents.float(), noise.to(latents.device), timesteps.to(latents.device))
        text = self.prompt_embeds().expand(batch, -1, -1)
        au_tokens = self._au_tokens(batch, aus, au_known)
        context = text if au_tokens is None else (text, au_tokens.to(self.dtype))

        recorder = _Recorder(self.pipe.unet, self.config.up_blocks, self.config.pool_size, self.config.attention_size)
        adapter = self.pipe.au_adapter
        previous_scale = adapter.au_scale if adapter is not None else None
        try:
            if adapter is not None:
                adapter.set_scale(self.config.au_scale)
            with recorder.installed():
                self.pipe.unet(noisy.to(self.dtype), timesteps.to(latents.device), encoder_hidden_states=context, return_dict=False)
        finally:
            if adapter is not None:
                adapter.set_scale(previous_scale)
        return recorder.result()


# -- the head --------------------------------------------------------------------------------------


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
    def for_extractor(cls, extractor: FERAnnoFeatureExtractor, label_set: LabelSet | str, **kwargs) -> "FERAnnoHead":
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


# -- the labeler -----------------------------------------------------------------------------------


@dataclass
class FERAnno:
    """A FERAnno labeler: the diffusion components (inside ``extractor``) plus a trained head.

    It follows the :class:`~synfer.labelers.registry.Labeler` protocol, so it can be an ensemble member.
    """

    extractor: FERAnnoFeatureExtractor
    head: FERAnnoHead
    source: str = ""
    kind: str = field(default="feranno", init=False)

    def __post_init__(self):
        self.head.check_compatible(self.extractor)
        self.head.to(self.extractor.device).eval()

    @property
    def label_set(self) -> LabelSet:
        return self.head.label_set

    @property
    def fingerprint(self) -> str:
        return json_sha256({"head": module_sha256(self.head), "extractor": self.extractor.spec()})

    @torch.no_grad()
    def predict_proba(
        self, images: torch.Tensor, aus: torch.Tensor | None = None, au_known: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Probabilities [B, classes] over :attr:`label_set` for images [B, 3, H, W] in [0, 1] (float32, CPU)."""
        features = self.extractor(images, aus, au_known).to(device=self.extractor.device, dtype=torch.float32)
        logits = self.head(features.features, features.attention)
        return logits.float().softmax(dim=-1).cpu()

    def predict(self, batch: LabelBatch) -> torch.Tensor:
        return self.predict_proba(batch.images, batch.aus, batch.au_known)

    def save_pretrained(self, path: str | Path) -> None:
        self.head.save_pretrained(path, safe_serialization=True)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        pipe=None,
        device: str | torch.device | None = "auto",
        dtype: str | None = None,
    ) -> "FERAnno":
        """Load a head folder and the diffusion model it names (or ``pipe``), checking the weight hashes.

        ``dtype`` defaults to the one the head was trained with, so that the hashes can be checked.
        """
        head = load_head(path)
        spec = head.config.extractor or {}
        if pipe is None:
            from ..models.loading import load_pipeline

            model = spec.get("model") or {}
            if not model.get("name"):
                raise ModelLoadError(f"FERAnno head {str(path)!r} does not name its diffusion model; pass pipe=")
            pipe = load_pipeline(
                model["name"], model.get("adapter"), device=device, dtype=dtype or spec.get("dtype"), seed=model.get("seed", 0)
            )
        extractor = FERAnnoFeatureExtractor(pipe, FeatureConfig.from_dict(spec["config"]), model=spec.get("model"))
        _check_weights(path, spec, extractor)
        return cls(extractor, head, source=str(path))


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


def _check_weights(path, spec: dict, extractor: FERAnnoFeatureExtractor) -> None:
    """The head is only meaningful on the UNet (and adapter) it was trained on: compare weight hashes."""
    if spec.get("dtype") != str(extractor.dtype).removeprefix("torch."):
        logger.warning(
            "FERAnno head %s was trained with a %s UNet and runs with %s: weight hashes are not compared",
            path, spec.get("dtype"), extractor.dtype,
        )
        return
    actual = extractor.spec()
    for key in ("unet_sha256", "au_adapter_sha256", "text_encoder_sha256", "vae_sha256"):
        if spec.get(key) != actual[key]:
            component = key.removesuffix("_sha256")
            raise ModelLoadError(
                f"FERAnno head {str(path)!r} was trained on a different {component} "
                f"(sha256 {str(spec.get(key))[:12]}…, this model's is {str(actual[key])[:12]}…)"
            )

