"""Stable Diffusion 1.5 with random weights, and the timed calls both SD1.5 benchmarks share.

``bench_sd15.py`` (CPU, reduced resolution) and ``device/suite.py`` (a GPU at 512 px) time the same
calls: diffusers' ``StableDiffusionPipeline`` and ``SynFERPipeline`` on one set of components (the
adapter is attached for SynFER's calls and detached for diffusers', so each runs its own attention
processors), semantic guidance in the modes of ``bench_guidance.py``, FERAnno, and the speed levers.
Weights are random: the cost of a pass does not depend on them. The tokenizer is synfer's in-memory
CLIP tokenizer, padded to 77 tokens as SD1.5's is, so the text encoder does SD1.5's work.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

PROMPT = "a close-up photo of a young woman smiling happily"
GUIDANCE_MODES = {
    # mode: (window, every, decoder, reuse prediction), as in bench_guidance.py
    "paper": ((0.6, 1.0), 1, "vae", False),
    "cheap": ((0.6, 1.0), 2, "tiny", True),
}


def quiet() -> None:
    import logging

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    logging.getLogger("synfer").setLevel(logging.ERROR)


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def hardware(device: str) -> dict:
    """What the figures were measured on."""
    info = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or None}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
        info["cpu_cores_visible"] = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# -- components -------------------------------------------------------------------------------------
def sd15_components(device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0, tiny: bool = False) -> dict:
    """UNet, VAE, CLIP-L text encoder (SD1.5 configs, random weights), tokenizer, DDIM scheduler, AU adapter.

    ``tiny``: synfer's tiny preset instead (the smoke mode of the device suite).
    """
    from synfer.models.au_adapter import AUAdapter
    from synfer.models.sd15 import sd15_text_encoder, sd15_unet, sd15_vae
    from synfer.models.tiny import tiny_components, tiny_tokenizer
    from synfer.pipelines.cost import sd15_scheduler

    if tiny:
        components = tiny_components(seed)
    else:
        torch.manual_seed(seed)
        unet = sd15_unet(device)
        components = {
            "vae": sd15_vae(device),
            "text_encoder": sd15_text_encoder(device),
            "tokenizer": tiny_tokenizer(),
            "unet": unet,
            "scheduler": sd15_scheduler(),
            "au_adapter": AUAdapter.from_unet(unet),
        }
    for name in ("vae", "text_encoder", "unet", "au_adapter"):
        components[name] = components[name].to(device=device, dtype=dtype).eval().requires_grad_(False)
    return components


class Pipelines:
    """diffusers' StableDiffusionPipeline and SynFERPipeline over one set of components."""

    def __init__(self, components: dict):
        from diffusers import StableDiffusionPipeline

        from synfer.pipelines.pipeline_synfer import SynFERPipeline

        self.components = components
        self.adapter = components["au_adapter"]
        plain = {k: v for k, v in components.items() if k != "au_adapter"}
        self.sd = StableDiffusionPipeline(**plain, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.synfer = SynFERPipeline(**components)
        for pipe in (self.sd, self.synfer):
            pipe.set_progress_bar_config(disable=True)
        self.adapter.detach()

    @property
    def unet(self):
        return self.components["unet"]

    @property
    def vae(self):
        return self.components["vae"]

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def use(self, variant: str):
        """The pipeline ``variant`` (``sd`` or ``synfer``), with the attention processors it runs with."""
        if variant == "sd":
            self.adapter.detach()
            return self.sd
        self.adapter.attach(self.unet)
        return self.synfer

    def sample(self, variant: str, batch: int, steps: int, size: int, guidance=None, output_type: str = "np", scheduler=None):
        """One generation call of ``batch`` images (CFG 7.5), synchronised."""
        from synfer.aus import AUVector

        pipe = self.use(variant)
        kwargs = dict(
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=size,
            width=size,
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
            output_type=output_type,
        )
        if variant == "synfer":
            kwargs.update(aus=[AUVector.parse("6,12")] * batch, au_scale=1.0, semantic_guidance=guidance)
        previous = pipe.scheduler
        if scheduler is not None:
            pipe.scheduler = scheduler
        try:
            result = pipe([PROMPT] * batch, **kwargs)
        finally:
            pipe.scheduler = previous
        synchronize(self.device)
        return result

    def unet_inputs(self, batch: int, size: int, adapter: bool):
        """Inputs of one UNet evaluation at ``batch`` (a CFG step of b images is batch 2b)."""
        device, dtype = self.device, self.unet.dtype
        generator = torch.Generator("cpu").manual_seed(0)
        latents = torch.randn(batch, 4, size // 8, size // 8, generator=generator).to(device, dtype)
        text = torch.randn(batch, 77, self.unet.config.cross_attention_dim, generator=generator).to(device, dtype)
        context = (text, torch.randn(batch, self.adapter.config.num_tokens, text.shape[-1], generator=generator).to(device, dtype))
        return latents, torch.tensor(500, device=device), context if adapter else text

    def unet_eval(self, batch: int, size: int, adapter: bool) -> Callable[[], None]:
        latents, t, context = self.unet_inputs(batch, size, adapter)

        @torch.no_grad()
        def run() -> None:
            if adapter:
                self.adapter.attach(self.unet)
            else:
                self.adapter.detach()
            self.unet(latents, t, encoder_hidden_states=context, return_dict=False)
            synchronize(self.device)

        return run

    def vae_decode(self, batch: int, size: int) -> Callable[[], None]:
        latents = torch.randn(batch, 4, size // 8, size // 8, generator=torch.Generator("cpu").manual_seed(0))

        @torch.no_grad()
        def run() -> None:
            vae = self.vae
            vae.decode(latents.to(self.device, vae.dtype) / vae.config.scaling_factor, return_dict=False)
            synchronize(self.device)

        return run


def guidance_for(pipes: Pipelines, mode: str, batch: int, classifier, tiny_decoder):
    """A SemanticGuidance in ``mode`` (see GUIDANCE_MODES) for ``batch`` images, or None for ``unguided``."""
    from synfer.pipelines.guidance import SemanticGuidance

    if mode == "unguided":
        return None
    window, every, decoder, reuse = GUIDANCE_MODES[mode]
    labels = [i % len(classifier.label_set.expressions) for i in range(batch)]
    return SemanticGuidance(
        classifier, labels, window=window, every=every, decoder=tiny_decoder if decoder == "tiny" else "vae", reuse_prediction=reuse
    )


def guidance_models(pipes: Pipelines, tiny: bool = False):
    """The guidance classifier (ResNet-18 at 224 px; the tiny one in smoke mode) and the TAESD decoder, random weights."""
    from diffusers import AutoencoderTiny

    from synfer.models.classifier import create_classifier

    torch.manual_seed(0)
    classifier = create_classifier("tiny-resnet" if tiny else "resnet18", "affectnet8").eval()
    if tiny:
        decoder = AutoencoderTiny(
            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)
        )
    else:
        decoder = AutoencoderTiny()  # the TAESD architecture
    device, dtype = pipes.device, pipes.vae.dtype
    return classifier.to(device).requires_grad_(False), decoder.eval().to(device=device, dtype=dtype).requires_grad_(False)


class _Images:
    """An in-memory caption dataset of random images, as the readers hand it to the diffusion trainer."""

    def __init__(self, n: int, size: int, seed: int = 0):
        import numpy as np
        from PIL import Image

        from synfer.data.captions.base import CaptionedImage

        rng = np.random.default_rng(seed)
        self.ids = [f"faces/{i:04d}.png" for i in range(n)]
        self.captions = [f"{PROMPT}, number {i}" for i in range(n)]
        self._items = [CaptionedImage(self.ids[i], Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                                      self.captions[i]) for i in range(n)]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int):
        return self._items[i]

    def fingerprint(self) -> str:
        return f"bench-{len(self)}-{self._items[0].image.size[0]}"


def train_steps(components: dict, batch: int, resolution: int, mixed_precision: str = "no") -> dict[str, Callable[[], None]]:
    """Two training steps on the same batch and frozen VAE / text encoder, each synchronised:

    - ``adapter``: the train-adapter step itself (``synfer.train.diffusion.adapter.build_adapter_trainer(...)``
      then ``DiffusionTrainer.train_step``): UNet frozen, AU adapter trained (AdamW, clipping, dropout).
    - ``unet``: a plain UNet training step as diffusers' ``train_text_to_image`` example writes it: every
      UNet weight trained with AdamW, MSE on the noise, no AU tokens (float32 weights, autocast under
      mixed precision).

    The UNet is left frozen (``requires_grad`` off) in the dtype the adapter trainer put it in.
    """
    import numpy as np
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from synfer.aus import NUM_AUS
    from synfer.train.diffusion import AdapterConfig
    from synfer.train.diffusion.adapter import build_adapter_trainer
    from synfer.train.diffusion.data import TrainingExamples
    from synfer.train.diffusion.loop import make_training_accelerator

    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    device = unet.device
    scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    data = _Images(batch, resolution)
    rng = np.random.default_rng(1)
    aus = rng.uniform(0, 5, (batch, NUM_AUS)).astype(np.float32)
    config = AdapterConfig(base="unused", data="in-memory", out="unused", batch_size=batch, cpu=device.type == "cpu",
                           mixed_precision=mixed_precision)
    examples = TrainingExamples(data, range(batch), resolution, seed=0, random_flip=False, fingerprint=data.fingerprint(), aus=aus,
                                known=np.ones_like(aus, bool))
    trainer = build_adapter_trainer(config, unet=unet, adapter=components["au_adapter"], vae=vae, text_encoder=text_encoder,
                                    tokenizer=components["tokenizer"], noise_scheduler=scheduler, examples=examples,
                                    mixed_precision=mixed_precision, accelerator=make_training_accelerator(config, None, mixed_precision))
    batch_data = trainer.parts.collate([examples[(0, j)] for j in range(batch)])
    batch_data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch_data.items()}
    frozen = unet.dtype
    autocast = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
    state: dict = {}
    generator = torch.Generator(device=device).manual_seed(0)

    def adapter_step() -> None:
        if unet.dtype != frozen:
            unet.to(frozen)
        unet.requires_grad_(False)
        trainer.train_step(batch_data)
        trainer.state.step += 1
        synchronize(device)

    def unet_step() -> None:
        if unet.dtype != torch.float32:
            unet.to(torch.float32)  # trained weights stay float32 (mixed precision autocasts the matmuls)
        unet.requires_grad_(True)
        if "optimizer" not in state:
            state["optimizer"] = torch.optim.AdamW(unet.parameters(), lr=1e-5, foreach=False)
        pixels = batch_data["pixel_values"].to(vae.dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator).float() * vae.config.scaling_factor
            text = text_encoder(batch_data["input_ids"])[0].float()
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, encoder_hidden_states=text).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        state["optimizer"].step()
        state["optimizer"].zero_grad(set_to_none=True)
        unet.requires_grad_(False)
        synchronize(device)

    return {"unet": unet_step, "adapter": adapter_step}


# -- timing -----------------------------------------------------------------------------------------
def interleaved(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of each function over ``repeats`` rounds, the functions interleaved in each round.

    Interleaving spreads a shared machine's load over all variants alike; the minimum of the rounds is
    the least disturbed figure.
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: {"wall": [], "cpu": []} for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            function()
            times[name]["wall"].append(time.perf_counter() - start)
            times[name]["cpu"].append(time.process_time() - cpu_start)
    return times


def best(times: dict[str, list[float]]) -> float:
    return min(times["wall"])


def summary(times: dict[str, list[float]]) -> dict:
    return {
        "seconds_min": round(min(times["wall"]), 4),
        "seconds_median": round(statistics.median(times["wall"]), 4),
        "cpu_seconds_min": round(min(times["cpu"]), 4),
        "rounds": len(times["wall"]),
    }


def ratio(times: dict, numerator: str, denominator: str) -> float:
    return round(best(times[numerator]) / best(times[denominator]), 4)


def peak_memory(run: Callable[[], object], device: str | torch.device) -> float | None:
    """Peak CUDA memory (MiB) allocated during ``run()`` above what was allocated before; off CUDA, runs it and gives None."""
    if torch.device(device).type != "cuda":
        run()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
