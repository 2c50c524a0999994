"""FERAnno's feature settings: how the UNet is read. Plain data, so the command line can check them first."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ...errors import ConfigError

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
    def from_dict(cls, data: dict) -> FeatureConfig:
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
