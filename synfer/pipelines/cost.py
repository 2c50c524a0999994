"""Exact FLOP accounting for SynFER generation, measured on the real architecture along the real code path.

Planning a dataset of hundreds of thousands of images needs the cost of one image, and of each choice
that changes it: resolution, steps, classifier-free guidance, semantic guidance (which steps, which
decoder, whether the guidance passes are reused), layout initialisation. Formulas drift from the code;
so every figure here is a count by ``torch.utils.flop_counter.FlopCounterMode`` of the very calls the
pipeline makes — ``SynFERPipeline.predict_noise``, ``encode_aus``, the VAE's ``decode`` / ``encode``,
the text encoder, and a real :class:`~synfer.pipelines.guidance.Guider` taking a real guided step,
backward pass included — at batch 1, and composed with the pipeline's own step selection
(``Guider.guides``, ``LayoutInit.start``). A test holds the composition
to the count of one whole ``SynFERPipeline.__call__``, exactly.

On the ``meta`` device the same calls run on shapes alone, so the full Stable Diffusion 1.5
architecture (``sd15``), or any model folder's architecture built from its configs, is costed in a few
seconds with no weights and no memory (:func:`model_architecture`).

What is counted: FlopCounterMode's convention, the matrix products and convolutions (multiply and add
counted as two); elementwise work, norms and softmax are not. Attention is counted in its math form
(two matrix products forward, and in the backward pass the products autograd runs), on every device:
torch's fused CPU attention kernel has no FLOP formula and would count as zero, so counting runs with
the math backend (:func:`flop_counter`). A fused GPU kernel does the same products forward; flash
attention's backward also recomputes the attention matrix, which is not counted here. Backward passes
count what autograd executes for the gradient with respect to the text embedding only: frozen weights
get no gradient, so a layer's backward costs about its forward (the input gradient) rather than twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError, ModelLoadError, first_line
from .guidance import VAE_DECODER, SemanticGuidance
from .inversion import LayoutInit

SD15_NAME = "sd15"
TINY_DECODER = "tiny"  # the TAESD architecture: diffusers' AutoencoderTiny with its default config
DEFAULT_CLASSIFIER = "resnet18"
DEFAULT_TFLOPS = 300.0  # an assumption: bf16 UNet/VAE work on a current data-centre GPU, not a measurement

# stable-diffusion-v1-5's scheduler/scheduler_config.json, sampled with DDIM (as synfer generates).
SD15_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# AUVector text for the AU encoding pass: the encoder's cost does not depend on the AUs.
_PROBE_AUS = "6,12"


# -- counting ---------------------------------------------------------------------------------------
class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, which breaks ``torch.autograd.grad``.

    The tracker hooks every module input; when one is a leaf that requires grad (the guided text
    embedding), ``torch.autograd.grad`` fails with "A leaf node was passed to
    _will_engine_execute_node" (pytorch/pytorch#131753). Only the total is needed here, which the
    counter keeps under "Global".
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *exc) -> None:
        return None


class _MetaScalars(TorchDispatchMode):
    """Answers a Python scalar asked of a ``meta`` tensor, which has no value, with True / 1.

    The guidance step asks whether its gradient is finite (``if not finite.all()``); on meta that
    question has no answer, and "all finite" is the path an ordinary step takes. No matrix product
    depends on such a value, so the count is that of the real path.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            value = args[0]
            return True if value.dtype == torch.bool else 1.0 if value.is_floating_point() else 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def flop_counter() -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` (no display) set up so that counts agree on every device and with autograd.

    Inside: attention runs its math form (counted the same on CPU, GPU and meta), meta tensors answer
    scalar questions, and ``torch.autograd.grad`` works. Read ``counter.get_total_flops()`` afterwards.
    """
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _NoModuleTracking()
    with sdpa_kernel(SDPBackend.MATH), counter, _MetaScalars():
        yield counter


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of calling ``fn()`` (see :func:`flop_counter`)."""
    return _counted(fn)[0]


def _counted(fn: Callable[[], Any]) -> tuple[int, Any]:
    """FLOPs of calling ``fn()``, and what it returned."""
    with flop_counter() as counter:
        result = fn()
    return int(counter.get_total_flops()), result


def format_flops(flops: float) -> str:
    """``803273441280`` -> ``"0.803 TFLOP"``: TFLOP from 0.1 TFLOP up, GFLOP and MFLOP below."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= 0.1 * scale or unit == "MFLOP":
            value = flops / scale
            return f"{value:,.3f} {unit}" if value < 10 else f"{value:,.1f} {unit}"
    raise AssertionError  # unreachable: the last unit always matches


# -- architectures ----------------------------------------------------------------------------------
def sd15_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD15_SCHEDULER_CONFIG)


def sd15_architecture(adapter: bool = True):
    """The SD1.5 architecture as a :class:`SynFERPipeline` on ``meta``: no weights, no memory, no tokenizer.

    ``adapter``: attach a fresh :class:`AUAdapter` (``AUAdapter.from_unet`` defaults) as a synfer model has.
    """
    from ..models.au_adapter import AUAdapter
    from ..models.sd15 import sd15_text_encoder, sd15_unet, sd15_vae
    from .pipeline_synfer import SynFERPipeline

    unet = sd15_unet("meta")
    pipe = SynFERPipeline(
        vae=sd15_vae("meta").eval(),
        text_encoder=sd15_text_encoder("meta").eval(),
        tokenizer=None,
        unet=unet.eval(),
        scheduler=sd15_scheduler(),
        au_adapter=AUAdapter.from_unet(unet).eval() if adapter else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _adapter_architecture(path: str | os.PathLike, device: torch.device):
    """An :class:`AUAdapter` built from a folder's ``config.json`` alone, on ``device``."""
    from ..models.au_adapter import AUAdapter
    from .loading import adapter_folder

    folder = adapter_folder(path)
    try:
        config = AUAdapter.load_config(str(folder))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read the AU adapter config in {str(path)!r}: {first_line(error)}") from None
    with torch.device(device):
        return AUAdapter.from_config(config).eval()


def _folder_architecture(source: str, local_only: bool):
    """A pipeline folder's (or hub id's) architecture on ``meta``, built from its configs: no weight is read."""
    import diffusers
    import transformers
    from diffusers import DiffusionPipeline

    from ..models.au_adapter import AUAdapter
    from .pipeline_synfer import SynFERPipeline

    def component(name: str) -> str:
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
            raise ModelLoadError(f"model {source!r} has no {name} in its model_index.json")
        return entry[1]

    def library_class(module, name: str):
        cls = getattr(module, component(name), None)
        if cls is None:
            raise ModelLoadError(f"model {source!r}: unknown {name} class {component(name)!r}")
        return cls

    options = {"local_files_only": local_only}
    try:
        index = DiffusionPipeline.load_config(source, **options)
        unet_class, vae_class = library_class(diffusers, "unet"), library_class(diffusers, "vae")
        text_class = library_class(transformers, "text_encoder")
        unet_config = unet_class.load_config(source, subfolder="unet", **options)
        vae_config = vae_class.load_config(source, subfolder="vae", **options)
        text_config = text_class.config_class.from_pretrained(source, subfolder="text_encoder", **options)
        scheduler = library_class(diffusers, "scheduler").from_pretrained(source, subfolder="scheduler", **options)
        tokenizer = library_class(transformers, "tokenizer").from_pretrained(source, subfolder="tokenizer", **options)
        adapter_config = None
        if isinstance(index.get("au_adapter"), (list, tuple)) and index["au_adapter"][1] is not None:
            adapter_config = AUAdapter.load_config(source, subfolder="au_adapter", **options)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not read the configs of model {source!r}: {first_line(error)}") from None
    with torch.device("meta"):
        unet = unet_class.from_config(unet_config).eval()
        vae = vae_class.from_config(vae_config).eval()
        text_encoder = text_class(text_config).eval()
        adapter = AUAdapter.from_config(adapter_config).eval() if adapter_config is not None else None
    pipe = SynFERPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, au_adapter=adapter
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_architecture(model: str, adapter: str | os.PathLike | None = None):
    """A :class:`SynFERPipeline` with ``model``'s architecture, for counting; loads no weights.

    ``model``: ``sd15`` (the SD1.5 architecture on ``meta``, with an AU adapter), ``tiny`` (the real
    random-weight tiny model on the CPU: it costs milliseconds), or a pipeline folder / hub id, built on
    ``meta`` from its configs. ``adapter``: an AU adapter folder whose config replaces (or adds) the adapter.
    """
    from ..models.tiny import TINY_NAME

    if model == SD15_NAME:
        pipe = sd15_architecture(adapter=adapter is None)
    elif model == TINY_NAME:
        from ..models.tiny import tiny_components
        from .pipeline_synfer import SynFERPipeline

        pipe = SynFERPipeline(**tiny_components(0))
        pipe.set_progress_bar_config(disable=True)
    else:
        from .loading import model_source

        pipe = _folder_architecture(*model_source(model))
    if adapter is not None:
        pipe.load_au_adapter(_adapter_architecture(adapter, pipe.unet.device))
    return pipe


def tiny_decoder_architecture(device: str | torch.device = "meta") -> nn.Module:
    """The TAESD architecture (diffusers' ``AutoencoderTiny`` default config) on ``device``, random or no weights."""
    from diffusers import AutoencoderTiny

    with torch.device(device):
        return AutoencoderTiny().eval()


def guidance_architecture(
    pipe,
    classifier: str | os.PathLike | nn.Module = DEFAULT_CLASSIFIER,
    *,
    window: tuple[float, float] = (0.6, 1.0),
    every: int = 1,
    decoder: str | os.PathLike | nn.Module = VAE_DECODER,
    reuse_prediction: bool = False,
    gradient_checkpointing: bool = False,
    label_set: str = "affectnet8",
) -> SemanticGuidance:
    """A :class:`SemanticGuidance` whose classifier and decoder have the given architectures, on ``pipe``'s device.

    ``classifier``: a registered backbone name (``resnet18``, ...), a classifier folder, or a module.
    ``decoder``: ``vae`` (the pipeline's), ``tiny`` (the TAESD architecture), an ``AutoencoderTiny``
    folder (its config only), or a module. Weights, where any are made, are random: they cost the same.
    """
    from ..models.classifier import create_classifier, load_classifier

    device = pipe.unet.device
    if isinstance(classifier, nn.Module):
        module = classifier
    elif Path(classifier).expanduser().is_dir():
        module = load_classifier(Path(classifier).expanduser()).to(device)
    else:
        with torch.device(device):
            module = create_classifier(str(classifier), label_set)
    if isinstance(decoder, nn.Module):
        decoder_module: str | nn.Module = decoder
    elif os.fspath(decoder) == VAE_DECODER:
        decoder_module = VAE_DECODER
    elif os.fspath(decoder) == TINY_DECODER:
        decoder_module = tiny_decoder_architecture(device)
    elif Path(decoder).expanduser().is_dir():
        from diffusers import AutoencoderTiny

        try:
            config = AutoencoderTiny.load_config(str(Path(decoder).expanduser()))
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"cannot read the decoder config in {os.fspath(decoder)!r}: {first_line(error)}"
            ) from None
        with torch.device(device):
            decoder_module = AutoencoderTiny.from_config(config).eval()
    else:
        raise ConfigError(
            f"unknown guidance decoder {os.fspath(decoder)!r} (accepted: {VAE_DECODER}, {TINY_DECODER}, an AutoencoderTiny folder)"
        )
    target = module.label_set.expressions[0]
    return SemanticGuidance(
        module.eval(),
        [target],
        window=window,
        every=every,
        decoder=decoder_module,
        reuse_prediction=reuse_prediction,
        gradient_checkpointing=gradient_checkpointing,
    )


# -- configuration and report -----------------------------------------------------------------------
@dataclass(frozen=True)
class CostConfig:
    """What one pipeline call does, as far as its cost goes.

    Args:
        height, width: image size (default: the model's native size).
        steps: ``num_inference_steps``.
        guidance_scale: classifier-free guidance runs (2 UNet evaluations per step) when it is > 1.
        au_scale: the pipeline's ``au_scale``; 0 skips the AU attention.
        guidance: semantic guidance as passed to the pipeline (see :func:`guidance_architecture`), or None.
        layout: layout initialisation as passed to the pipeline (its images may be left out), or None.
        batch_size: prompts per call (one image each); the layout prompt is encoded once per call.
    """

    height: int | None = None
    width: int | None = None
    steps: int = 50
    guidance_scale: float = 7.5
    au_scale: float = 1.0
    guidance: SemanticGuidance | None = None
    layout: LayoutInit | None = None
    batch_size: int = 1

    def __post_init__(self):
        if int(self.steps) != self.steps or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {self.batch_size}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value}")


@dataclass(frozen=True)
class CostReport:
    """FLOPs of one image (and one call) under a :class:`CostConfig`; component figures are at batch 1."""

    model: str
    height: int
    width: int
    steps: int
    guidance_scale: float
    classifier_free_guidance: bool
    au_adapter: bool
    batch_size: int
    guidance: dict | None
    layout: dict | None
    # one pass of each component, batch 1
    text_encoder: int
    au_encoder: int
    unet_eval: int  # the UNet as the pipeline calls it: with AU tokens when the model has an adapter
    unet_eval_bare: int  # the same UNet without AU tokens: the bare SD computation
    vae_decode: int
    vae_encode: int
    classifier_forward: int | None
    guidance_decode: int | None
    # one denoising step, batch 1
    unguided_step: int
    guided_step: int | None
    inversion_pass: int | None
    # how often each runs per image
    sampled_steps: int
    guided_steps: int
    inversion_passes: int
    # the whole call
    per_call: int

    @property
    def unguided_steps(self) -> int:
        return self.sampled_steps - self.guided_steps

    @property
    def text_passes(self) -> int:
        """Text-encoder passes per image: the prompt, and the negative prompt under classifier-free guidance."""
        return 2 if self.classifier_free_guidance else 1

    @property
    def per_image(self) -> float:
        return self.per_call / self.batch_size

    @property
    def adapter_overhead(self) -> float:
        """Fraction the AU adapter adds to a UNet evaluation."""
        return self.unet_eval / self.unet_eval_bare - 1.0

    @property
    def guided_step_backward(self) -> int | None:
        """The backward part of a guided step: its total less its forward passes (includes any recomputation)."""
        if self.guided_step is None:
            return None
        reuse = bool(self.guidance and self.guidance["reuse_prediction"])
        if reuse:  # conditional pass with graph (its noise reused), plus the unconditional pass under CFG
            denoise = self.unet_eval if self.classifier_free_guidance else 0
        else:  # the update's conditional pass with graph, then the step's ordinary pass
            denoise = self.unguided_step
        forward = self.unet_eval + (self.guidance_decode or 0) + (self.classifier_forward or 0)
        return self.guided_step - denoise - forward

    @property
    def parts(self) -> dict[str, int]:
        """FLOPs per call by stage; they sum to :attr:`per_call`."""
        b = self.batch_size
        layout_text = self.text_encoder if self.layout is not None else 0
        layout = b * (self.vae_encode + self.inversion_passes * (self.inversion_pass or 0)) if self.layout else 0
        return {
            "text": b * self.text_passes * self.text_encoder + layout_text,
            "aus": b * self.au_encoder,
            "layout": layout,
            "unguided_steps": b * self.unguided_steps * self.unguided_step,
            "guided_steps": b * self.guided_steps * (self.guided_step or 0),
            "decode": b * self.vae_decode,
        }

    def to_dict(self) -> dict:
        """Every setting and figure, JSON-ready (FLOPs as integers)."""
        data = dataclasses.asdict(self)
        data.update(
            per_image=self.per_image,
            unguided_steps=self.unguided_steps,
            adapter_overhead=self.adapter_overhead,
            guided_step_backward=self.guided_step_backward,
            parts=self.parts,
        )
        return data

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, FLOPs, note) rows for a table, component passes first, then steps, then the image."""
        cfg = "CFG: 2 UNet evaluations" if self.classifier_free_guidance else "no CFG: 1 UNet evaluation"
        rows = [
            (
                "UNet evaluation",
                format_flops(self.unet_eval),
                f"batch 1, {self.height}x{self.width}"
                + (f", AU adapter +{100 * self.adapter_overhead:.2f}%" if self.au_adapter else ", no AU adapter"),
            ),
            ("text encoder pass", format_flops(self.text_encoder), f"{self.text_passes} per image"),
            ("VAE decode", format_flops(self.vae_decode), "1 per image"),
            ("VAE encode", format_flops(self.vae_encode), "1 per image with layout init" if self.layout else "unused"),
        ]
        if self.guidance is not None:
            rows.append(
                ("FER classifier forward", format_flops(self.classifier_forward or 0), self.guidance["classifier"])
            )
            if self.guidance["decoder"] != VAE_DECODER:
                decoder = self.guidance["decoder"]
                rows.append(
                    (
                        "guidance decoder forward",
                        format_flops(self.guidance_decode or 0),
                        "TAESD architecture" if decoder == TINY_DECODER else decoder,
                    )
                )
        rows.append(("unguided step", format_flops(self.unguided_step), f"{cfg}; {self.unguided_steps} per image"))
        if self.guided_step is not None:
            g = self.guidance
            how = "reusing its passes" if g["reuse_prediction"] else "update, then denoise"
            rows.append(
                (
                    "guided step",
                    format_flops(self.guided_step),
                    (
                        f"{self.guided_steps} per image (window {g['window'][0]:g}:{g['window'][1]:g}, every {g['every']}, "
                        f"{g['decoder']} decoder, {how}); {self.guided_step / self.unguided_step:.2f}x an unguided step"
                    ),
                )
            )
            rows.append(
                (
                    "  of which backward",
                    format_flops(self.guided_step_backward or 0),
                    "gradient to the text embedding only",
                )
            )
        if self.layout is not None:
            rows.append(
                (
                    "layout inversion",
                    format_flops(self.parts["layout"] / self.batch_size),
                    f"VAE encode + {self.inversion_passes} UNet evaluations, per image",
                )
            )
        rows.append(("per image", format_flops(self.per_image), f"{self.sampled_steps} sampled steps, decode included"))
        return rows


def gpu_hours(report: CostReport, n_images: int, achieved_tflops: float) -> float:
    """Device-hours to make ``n_images`` at ``achieved_tflops`` TFLOP/s actually sustained (not the peak)."""
    if not achieved_tflops > 0:
        raise ConfigError(f"the achieved TFLOP/s must be a number > 0, got {achieved_tflops}")
    if n_images < 0:
        raise ConfigError(f"the number of images must be >= 0, got {n_images}")
    return report.per_image * n_images / (achieved_tflops * 1e12) / 3600.0


# -- measurement ------------------------------------------------------------------------------------
def _is_taesd(module: nn.Module) -> bool:
    """Whether ``module`` has the TAESD architecture: an ``AutoencoderTiny`` with the default config."""
    from diffusers import AutoencoderTiny

    if not isinstance(module, AutoencoderTiny):
        return False

    def plain(value):  # a config read from JSON holds lists where the defaults are tuples
        return list(value) if isinstance(value, tuple) else value

    default = tiny_decoder_architecture("meta").config
    return all(plain(module.config.get(k)) == plain(v) for k, v in default.items() if not k.startswith("_"))


def _guidance_summary(guidance: SemanticGuidance) -> dict:
    classifier = guidance.classifier
    name = getattr(classifier, "backbone_name", type(classifier).__name__)
    size = getattr(classifier, "input_size", None)
    decoder = guidance.decoder
    if isinstance(decoder, nn.Module):
        decoder = TINY_DECODER if _is_taesd(decoder) else type(decoder).__name__
    return {
        "window": list(guidance.window),
        "every": int(guidance.every),
        "decoder": decoder,
        "reuse_prediction": bool(guidance.reuse_prediction),
        "gradient_checkpointing": bool(guidance.gradient_checkpointing),
        "classifier": f"{name} at {size}px" if size else name,
    }


def measure_cost(pipe, config: CostConfig, model: str | None = None) -> CostReport:
    """Count each pass ``pipe`` makes under ``config`` and compose them into the cost of one call.

    ``pipe`` is any :class:`SynFERPipeline`; on ``meta`` (see :func:`model_architecture`) nothing is
    computed but shapes. The pipe is left as it was.
    """
    from .pipeline_synfer import SynFERPipeline

    if not isinstance(pipe, SynFERPipeline):
        raise ConfigError(f"cost accounting needs a SynFERPipeline, got {type(pipe).__name__}")
    scale_factor = pipe.vae_scale_factor
    height = int(config.height or pipe.unet.config.sample_size * scale_factor)
    width = int(config.width or pipe.unet.config.sample_size * scale_factor)
    if height % scale_factor or width % scale_factor:
        raise ConfigError(f"height and width must be multiples of {scale_factor}, got {height}x{width}")
    device, dtype = pipe.unet.device, pipe.unet.dtype
    do_cfg = config.guidance_scale > 1.0

    # The sampler's own schedule, on a copy: PNDM, for one, runs more timesteps than `steps`.
    schedule = type(pipe.scheduler).from_config(pipe.scheduler.config)
    schedule.set_timesteps(config.steps)
    timesteps = schedule.timesteps.cpu()
    first_step, inverted, layout = 0, 0, None
    if config.layout is not None:
        # The pipeline's own check and step choice; the references themselves cost what any image costs.
        images = config.layout.images if config.layout.images is not None else ()
        inversion = config.layout.with_images(images).start(pipe, 1, 1, config.steps)
        first_step, inverted = inversion.first_step, inversion.steps
        timesteps = timesteps[first_step:]
        layout = {
            "strength": config.layout.strength,
            "iterations": int(config.layout.iterations),
            "inverted_steps": inverted,
        }
    guider = None
    if config.guidance is not None:
        # Counted at batch 1: one target, the call's first (the cost does not depend on it).
        targets = [] if config.guidance.target_labels is None else list(config.guidance.target_labels)
        target = targets[0] if targets else config.guidance.classifier.label_set.expressions[0]
        guider = config.guidance.with_targets([target]).start(pipe, 1, 1, config.steps)
    guided = sum(1 for i in range(len(timesteps)) if guider is not None and guider.guides(first_step + i))
    t = timesteps[-1]

    latents = torch.zeros(
        1, pipe.unet.config.in_channels, height // scale_factor, width // scale_factor, device=device, dtype=dtype
    )
    tokens = (
        pipe.tokenizer.model_max_length
        if pipe.tokenizer is not None
        else pipe.text_encoder.config.max_position_embeddings
    )
    ids = torch.zeros(1, tokens, dtype=torch.long, device=pipe.text_encoder.device)

    previous_scale = pipe.au_adapter.au_scale if pipe.au_adapter is not None else None
    counts: dict[str, int | None] = {}
    try:
        with torch.no_grad():
            counts["text_encoder"], encoded = _counted(lambda: pipe.text_encoder(ids))
            embeds = encoded[0].to(dtype)
            au_tokens = null_tokens = None
            counts["au_encoder"] = 0
            if pipe.au_adapter is not None:
                counts["au_encoder"], (au_tokens, null_tokens, _) = _counted(
                    lambda: pipe.encode_aus(_PROBE_AUS, 1, 1, device)
                )
                au_tokens, null_tokens = au_tokens.to(dtype), null_tokens.to(dtype)
                pipe.au_adapter.set_scale(config.au_scale)
            negative = embeds if do_cfg else None

            def noise(*args):
                return count_flops(lambda: pipe.predict_noise(*args))

            counts["unet_eval"] = noise(latents, t, embeds, None, au_tokens, null_tokens, 1.0)
            counts["unet_eval_bare"] = noise(latents, t, embeds, None, None, None, 1.0)
            counts["unguided_step"] = noise(latents, t, embeds, negative, au_tokens, null_tokens, config.guidance_scale)
            counts["inversion_pass"] = (
                noise(latents, t, embeds, None, null_tokens, null_tokens, 1.0) if layout else None
            )
            scaled = latents / pipe.vae.config.scaling_factor
            counts["vae_decode"] = count_flops(lambda: pipe.vae.decode(scaled, return_dict=False))
            pixels = torch.zeros(1, 3, height, width, device=pipe.vae.device, dtype=pipe.vae.dtype)
            counts["vae_encode"] = count_flops(lambda: pipe.vae.encode(pixels))
            counts["classifier_forward"] = counts["guidance_decode"] = counts["guided_step"] = None
            if guider is not None:
                classifier = config.guidance.classifier
                parameter = next(classifier.parameters())
                images = torch.zeros(1, 3, height, width, device=parameter.device, dtype=parameter.dtype)
                counts["classifier_forward"] = count_flops(lambda: classifier(images))
                decoder = guider.decoder
                decoder_input = latents.to(decoder.dtype) / decoder.config.scaling_factor
                counts["guidance_decode"] = count_flops(lambda: decoder.decode(decoder_input, return_dict=False))
                with guider:  # freezes the modules as the pipeline's loop does
                    counts["guided_step"] = count_flops(
                        lambda: guider.step(latents, t, embeds, negative, au_tokens, null_tokens, config.guidance_scale)
                    )
    finally:
        if pipe.au_adapter is not None:
            pipe.au_adapter.set_scale(previous_scale)

    b = config.batch_size
    passes = 2 if do_cfg else 1
    inversion_passes = inverted * (1 + int(config.layout.iterations)) if layout else 0
    per_image = (
        passes * counts["text_encoder"]
        + counts["au_encoder"]
        + (len(timesteps) - guided) * counts["unguided_step"]
        + guided * (counts["guided_step"] or 0)
        + counts["vae_decode"]
    )
    if layout:
        per_image += counts["vae_encode"] + inversion_passes * counts["inversion_pass"]
    per_call = b * per_image + (counts["text_encoder"] if layout else 0)  # the layout prompt: once per call
    return CostReport(
        model=model or "pipeline",
        height=height,
        width=width,
        steps=int(config.steps),
        guidance_scale=float(config.guidance_scale),
        classifier_free_guidance=do_cfg,
        au_adapter=pipe.au_adapter is not None,
        batch_size=int(b),
        guidance=_guidance_summary(config.guidance) if config.guidance is not None else None,
        layout=layout,
        sampled_steps=len(timesteps),
        guided_steps=guided,
        inversion_passes=inversion_passes,
        per_call=int(per_call),
        **counts,
    )
