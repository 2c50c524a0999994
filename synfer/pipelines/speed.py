"""Speed levers for a :class:`~synfer.pipelines.pipeline_synfer.SynFERPipeline`, each one a choice the user makes.

- :func:`use_channels_last`: the UNet's and the VAE's convolutions in NHWC memory format (the layout
  GPU tensor cores and oneDNN prefer).
- :func:`compile_unet`: ``torch.compile`` of the UNet in place (its class, config and state dict stay
  those of the UNet, so fingerprints and the adapter's processors are untouched).
- :func:`set_vae_dtype`: the VAE in another dtype than the UNet (decoding, layout encoding and
  VAE-decoded semantic guidance all follow it). Decoding in float16 falls back to float32 for an image
  that overflows, where the VAE's config asks for it (``force_upcast``, as diffusers' SDXL pipelines
  read it): see ``SynFERPipeline.decode_latents``.
- :func:`attention_report`: which attention each component runs (SDPA is the default everywhere).

Channels-last, compilation and another VAE dtype can change images in their last bits, so
``synfer generate`` keeps them off unless asked and records them in the manifest. The rules (names,
checks) are plain data here, so the command line checks ``--vae-dtype`` without importing torch.
docs/performance.md says when each pays.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:
    import torch

MODEL_VAE_DTYPE = "model"  # the VAE stays in the pipeline's dtype (--dtype), as diffusers' StableDiffusionPipeline runs it
COMPILE_BACKEND = "inductor"  # torch.compile's default backend

# --vae-dtype NAME -> the torch dtype's name (None: keep the VAE as loaded).
VAE_DTYPES: Registry[str | None] = Registry("VAE dtype")
VAE_DTYPES.register(MODEL_VAE_DTYPE, None)
for _name in ("float32", "float16", "bfloat16"):
    VAE_DTYPES.register(_name, _name)


def check_vae_dtype(name: str) -> str:
    return VAE_DTYPES.check(name)


def set_vae_dtype(pipe, name: str) -> torch.dtype:
    """Cast ``pipe.vae`` to the dtype ``name`` (``model`` leaves it as loaded); returns the VAE's dtype."""
    import torch

    dtype = VAE_DTYPES[name]
    if dtype is not None:
        pipe.vae.to(dtype=getattr(torch, dtype))
    return pipe.vae.dtype


def use_channels_last(pipe, enabled: bool = True) -> None:
    """Put the UNet's and the VAE's weights in channels-last (NHWC) format, or back to contiguous (NCHW).

    A convolution whose weight is channels-last picks NHWC kernels and returns NHWC activations, so the
    whole network follows without its inputs being converted.
    """
    import torch

    memory_format = torch.channels_last if enabled else torch.contiguous_format
    for module in (pipe.unet, pipe.vae):
        module.to(memory_format=memory_format)


def compile_unet(pipe, backend: str | None = None, mode: str | None = None) -> None:
    """``torch.compile`` the UNet in place (``nn.Module.compile``); the first call of each new shape compiles.

    ``backend`` defaults to :data:`COMPILE_BACKEND` (inductor); ``mode`` is torch.compile's (``None``,
    ``"reduce-overhead"``: CUDA graphs, ``"max-autotune"``).
    """
    options = {"backend": backend or COMPILE_BACKEND}
    if mode is not None:
        options["mode"] = mode
    pipe.unet.compile(**options)


def is_compiled(module) -> bool:
    """Whether :func:`compile_unet` (``nn.Module.compile``) was applied to ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None


def attention_report(pipe) -> dict:
    """The attention implementation of every attention layer of the UNet, the VAE and the text encoder.

    ``sdpa_everywhere`` is true when every layer runs ``torch.nn.functional.scaled_dot_product_attention``
    (diffusers' ``AttnProcessor2_0``, the AU adapter's processor on its ``sdpa`` backend, transformers'
    ``sdpa`` implementation).
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from ..models.au_adapter import AUAttnProcessor

    def processors(module) -> Counter:
        found = Counter()
        for layer in module.modules():
            if isinstance(layer, Attention):
                processor = layer.processor
                name = type(processor).__name__
                if isinstance(processor, AUAttnProcessor):
                    name += f"[{processor.state.backend}]"
                found[name] += 1
        return found

    def is_sdpa(name: str) -> bool:
        return name == AttnProcessor2_0.__name__ or name == f"{AUAttnProcessor.__name__}[sdpa]"

    report = {"unet": dict(processors(pipe.unet)), "vae": dict(processors(pipe.vae))}
    text = getattr(getattr(pipe.text_encoder, "config", None), "_attn_implementation", None)
    report["text_encoder"] = text
    report["sdpa_everywhere"] = all(is_sdpa(name) for part in ("unet", "vae") for name in report[part]) and text == "sdpa"
    return report
