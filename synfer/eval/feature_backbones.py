"""Feature backbones for the distribution metrics, loaded from local paths: ``KIND:PATH``.

- ``dinov2:DIR`` (the default kind): a transformers ``Dinov2Model`` folder (e.g. dinov2-large); the
  pooled CLS token after the final LayerNorm (1,024-d for ViT-L/14); 224 px, ImageNet mean and std.
- ``inception:FILE`` (or a folder holding it): ``pt_inception-2015-12-05-6726825d.pth``, the FID network;
  pool3 (2,048-d); 299 px with clean-fid's input scaling.
- ``clip:DIR``: a transformers CLIP folder (``CLIPModel`` or ``CLIPVisionModelWithProjection``); the
  projected image embedding (a bare ``CLIPVisionModel`` folder gives its pooled output, never a
  projection initialised at random); the config's input size, CLIP's mean and std.

- ``classifier:DIR``: a synfer FER classifier folder (``synfer.models.classifier``); its backbone's pooled
  features before the head, at the classifier's own input size and normalisation. For domains with no
  pretrained backbone (the procedural world); say which classifier it is, since one trained on the
  reference domain sees what it was trained to tell apart.

DINOv2 is the default because Stein et al. 2023 ("Exposing flaws of generative model evaluation
metrics and their unfair treatment of diffusion models") found its feature space agrees with human
judgements of realism far better than Inception's; Inception is here to compare with published FIDs.

Every kind takes images through ``synfer.eval.preprocess.Preprocess`` (PIL bicubic, one code path for
real and generated images) and normalises them itself. A loaded backbone knows its weight files' hashes
and a fingerprint of everything that decides its features, which keys the feature cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, ModelLoadError, first_line
from ..models.fingerprint import json_sha256
from ..registry import Registry
from .model_files import local_model_path, model_files
from .preprocess import Preprocess

if TYPE_CHECKING:
    import torch

DEFAULT_KIND = "dinov2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINOV2_SIZE = 224  # dgm-eval's and Stein et al.'s input size for DINOv2 ViT-L/14


@dataclass(frozen=True)
class BackboneOptions:
    """What the user may choose about a backbone; the rest is the kind's own."""

    size: int | None = None  # DINOv2 only: the input size (default 224)
    resize: str = "squash"
    dtype: str = "float32"


@dataclass(eq=False)
class FeatureBackbone:
    """A loaded backbone: pixels [B, 3, S, S] in [0, 1] -> features [B, D] float32 (numpy)."""

    kind: str
    source: str
    files: dict[str, str]  # file name -> SHA-256
    preprocess: Preprocess
    dim: int
    forward: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    device: torch.device | None = None
    dtype: str = "float32"
    output: str = ""  # which activation the features are, in words
    role: str = "features"

    @property
    def name(self) -> str:
        return self.kind

    @property
    def fingerprint(self) -> str:
        return json_sha256({"kind": self.kind, "files": self.files, "output": self.output})

    def record(self) -> dict:
        """Everything that decides the features (the feature cache compares it)."""
        return {"role": self.role, "kind": self.kind, "fingerprint": self.fingerprint, "output": self.output,
                "dim": self.dim, "dtype": self.dtype, "preprocessing": self.preprocess.to_dict()}

    def describe(self) -> dict:
        return {**self.record(), "source": self.source, "files": dict(self.files)}

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.forward(pixels.to(self.device))
        return out.float().cpu().numpy()


BackboneLoader = Callable[[str, "torch.device", BackboneOptions], FeatureBackbone]
FEATURE_BACKBONES: Registry[BackboneLoader] = Registry("feature backbone")


def parse_feature_spec(spec: str) -> tuple[str, str]:
    """``KIND:PATH`` -> (kind, path); a bare path is a DINOv2 folder (the default kind)."""
    kind, sep, path = str(spec).partition(":")
    if not sep or kind not in FEATURE_BACKBONES and ("/" in kind or "\\" in kind or "." in kind):
        return DEFAULT_KIND, str(spec)
    return FEATURE_BACKBONES.parse(spec)


def check_feature_spec(spec: str) -> str:
    parse_feature_spec(spec)
    return spec


def load_feature_backbone(spec: str, device: str | torch.device = "cpu", options: BackboneOptions | None = None) -> FeatureBackbone:
    from ..devices import resolve_device

    kind, path = parse_feature_spec(spec)
    return FEATURE_BACKBONES[kind](path, resolve_device(device), options or BackboneOptions())


def _torch_dtype(name: str, device: torch.device):
    from ..devices import resolve_dtype

    dtype = resolve_dtype(name, device)
    import torch

    if dtype != torch.float32 and device.type == "cpu":
        raise ConfigError(f"--dtype {name} is for GPUs; features on the CPU are computed in float32")
    return dtype


def _normalise(mean: tuple[float, ...], std: tuple[float, ...]):
    import torch

    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def apply(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - mean_t.to(pixels.device)) / std_t.to(pixels.device)

    return apply


def _from_pretrained(cls, folder, what: str):
    """A transformers model from ``folder`` (safetensors only), refusing one whose weights do not all load."""
    try:
        model, info = cls.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot load {what} from {str(folder)!r}: {first_line(error)}") from None
    return model, info


def _missing(info: dict) -> list[str]:
    return list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])


def dinov2_backbone(model, source: str, files: dict[str, str], device, options: BackboneOptions) -> FeatureBackbone:
    """A loaded (or, for benchmarks, random) ``Dinov2Model`` as a feature backbone."""
    dtype = _torch_dtype(options.dtype, device)
    model = model.to(device=device, dtype=dtype).eval()
    normalise = _normalise(IMAGENET_MEAN, IMAGENET_STD)

    def forward(pixels):
        return model(pixel_values=normalise(pixels).to(dtype)).pooler_output

    return FeatureBackbone("dinov2", source, files, Preprocess(options.size or DINOV2_SIZE, options.resize),
                           int(model.config.hidden_size), forward, device, options.dtype, "pooled CLS token (final LayerNorm)")


def clip_backbone(model, source: str, files: dict[str, str], device, options: BackboneOptions, projected: bool) -> FeatureBackbone:
    """A CLIP image tower (with or without its projection) as a feature backbone."""
    if options.size is not None and options.size != model.config.image_size:
        raise ConfigError(f"a CLIP backbone takes its own input size ({model.config.image_size}); --feature-size is for DINOv2")
    dtype = _torch_dtype(options.dtype, device)
    model = model.to(device=device, dtype=dtype).eval()
    normalise = _normalise(CLIP_MEAN, CLIP_STD)

    def forward(pixels):
        out = model(pixel_values=normalise(pixels).to(dtype))
        return out.image_embeds if projected else out.pooler_output

    dim = int(model.config.projection_dim if projected else model.config.hidden_size)
    output = "projected image embedding" if projected else "pooled output (no projection in this folder)"
    return FeatureBackbone("clip", source, files, Preprocess(int(model.config.image_size), options.resize), dim,
                           forward, device, options.dtype, output)


def inception_backbone(model, source: str, files: dict[str, str], device, options: BackboneOptions) -> FeatureBackbone:
    """The FID Inception (``synfer.models.inception.FIDInceptionV3``) as a feature backbone, clean-fid's input scaling."""
    from ..models.inception import FID_FEATURES, FID_SIZE

    if options.size is not None and options.size != FID_SIZE:
        raise ConfigError(f"the FID Inception takes {FID_SIZE} px inputs; --feature-size is for DINOv2")
    dtype = _torch_dtype(options.dtype, device)
    model.input_scaling = "clean-fid"
    model = model.to(device=device, dtype=dtype).eval()

    def forward(pixels):
        return model(pixels.to(dtype))

    return FeatureBackbone("inception", source, files, Preprocess(FID_SIZE, options.resize), FID_FEATURES, forward,
                           device, options.dtype, "pool3 (clean-fid input scaling)")


@FEATURE_BACKBONES.register("dinov2")
def load_dinov2(path: str, device: torch.device, options: BackboneOptions) -> FeatureBackbone:
    from transformers import Dinov2Model

    folder = local_model_path(path, "DINOv2 backbone", "a transformers Dinov2Model folder")
    files = model_files(folder)
    _torch_dtype(options.dtype, device)
    model, info = _from_pretrained(Dinov2Model, folder, "a DINOv2 backbone")
    if _missing(info):
        raise ModelLoadError(f"{folder} is not a complete Dinov2Model: {len(_missing(info))} weights missing "
                             f"(first: {_missing(info)[0]})")
    return dinov2_backbone(model, str(path), files, device, options)


@FEATURE_BACKBONES.register("clip")
def load_clip(path: str, device: torch.device, options: BackboneOptions) -> FeatureBackbone:
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    folder = local_model_path(path, "CLIP backbone", "a transformers CLIP folder")
    files = model_files(folder)
    _torch_dtype(options.dtype, device)
    model, info = _from_pretrained(CLIPVisionModelWithProjection, folder, "a CLIP image tower")
    projected = not any(key.startswith("visual_projection") for key in _missing(info))
    if not projected:  # a bare vision tower: its pooled output, never a randomly initialised projection
        model, info = _from_pretrained(CLIPVisionModel, folder, "a CLIP image tower")
    if _missing(info):
        raise ModelLoadError(f"{folder} is not a complete CLIP image tower: {len(_missing(info))} weights missing "
                             f"(first: {_missing(info)[0]})")
    return clip_backbone(model, str(path), files, device, options, projected)


@FEATURE_BACKBONES.register("inception")
def load_inception(path: str, device: torch.device, options: BackboneOptions) -> FeatureBackbone:
    from ..models.inception import FID_WEIGHTS_NAME, FIDInceptionV3

    local = local_model_path(path, "FID Inception weights", f"the file {FID_WEIGHTS_NAME} or a folder holding it")
    if local.is_dir():
        local = local / FID_WEIGHTS_NAME
        if not local.is_file():
            raise ModelLoadError(f"{path!r} holds no {FID_WEIGHTS_NAME} (the FID Inception weights of pytorch-fid)")
    _torch_dtype(options.dtype, device)
    files = model_files(local)
    model = FIDInceptionV3.from_checkpoint(local, "cpu", input_scaling="clean-fid")
    return inception_backbone(model, str(path), files, device, options)


@FEATURE_BACKBONES.register("classifier")
def load_classifier_features(path: str, device: torch.device, options: BackboneOptions) -> FeatureBackbone:
    from ..models.classifier import CONFIG_NAME, load_classifier

    folder = local_model_path(path, "classifier backbone", "a synfer classifier folder (config.json + model.safetensors)")
    if options.size is not None:
        raise ConfigError("a classifier backbone takes its own input size; --feature-size is for DINOv2")
    dtype = _torch_dtype(options.dtype, device)
    files = model_files(folder)
    if CONFIG_NAME not in files:
        raise ModelLoadError(f"{folder} is not a synfer classifier folder (no {CONFIG_NAME})")
    classifier = load_classifier(folder, device=device).to(dtype)

    def forward(pixels):
        return classifier.backbone(classifier.preprocess(pixels.to(dtype)))

    return FeatureBackbone("classifier", str(path), files, Preprocess(classifier.input_size, options.resize),
                           int(classifier.backbone.feature_dim), forward, device, options.dtype,
                           f"{classifier.backbone_name} pooled features before the head")
