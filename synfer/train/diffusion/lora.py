"""``train_lora()``: SynFER's stage 1, the UNet learns face captions; what ``synfer train-lora`` runs.

```python
from synfer.train.diffusion import LoraConfig, train_lora

train_lora(LoraConfig(base="/models/sd15", data="FEText/", out="runs/lora", max_train_steps=10_000))
```

A peft LoRA on the UNet's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` by
default), or with ``full`` the whole UNet; ``init`` starts it from a config with random weights
(training from scratch). The VAE and text encoder stay frozen. Outputs, next to the run's record
(see :mod:`.run`):

```
RUN/pytorch_lora_weights.safetensors   diffusers' LoRA format: StableDiffusionPipeline.load_lora_weights(RUN)
RUN/unet/                              instead, with --full: the trained UNet (diffusers folder)
RUN/pipeline/                          with --merge: the base with the trained (LoRA-fused) UNet
```
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...data.run_folder import RunFolder, replace_dir
from ...errors import ConfigError
from ...progress import Reporter, SilentReporter
from .components import FULL_UNET, INIT_MARKER, LORA_WEIGHTS, UNetSource, check_base, file_sha256, untrained_components
from .config import LoraConfig
from .run import check_out, finished_result, read_result, write_result

PIPELINE_DIR = "pipeline"


@dataclass
class LoraResult:
    """What :func:`train_lora` wrote: ``weights`` (the LoRA file or the unet/ folder), ``pipeline`` with --merge."""

    out: Path
    steps: int
    final_loss: float | None
    weights: Path
    pipeline: Path | None = None
    encoded_latents: int = 0
    finished_before: bool = False

    @classmethod
    def from_result(cls, out: Path, data: dict, finished_before: bool = False) -> LoraResult:
        return cls(out, data["steps"], data.get("final_loss"), out / data["weights"],
                   out / data["pipeline"] if data.get("pipeline") else None, data.get("encoded_latents", 0), finished_before)


def caption_dropout_for(config: LoraConfig, from_scratch: bool) -> float:
    if config.caption_dropout is not None:
        return config.caption_dropout
    return 0.1 if from_scratch else 0.0


def train_lora(config: LoraConfig, reporter: Reporter | None = None, *, dataset=None) -> LoraResult:
    """Train the UNet's LoRA (or the whole UNet) on an image-caption set; ``dataset`` replaces ``config.data`` (tests)."""
    reporter = reporter or SilentReporter()
    check_out(config)
    out = Path(config.out)
    base = check_base(config.base)
    untrained = untrained_components(base)
    from .common import check_trained_base

    check_trained_base(base, needs_unet=False)
    if "unet" in untrained and not config.full:
        raise ConfigError(f"the UNet of --base {config.base} is untrained (synfer init-model): train all of it with --full")
    finished = finished_result(config, "train-lora")
    if finished is not None:
        reporter.log(f"{out} is a finished run; its weights are {out / finished['weights']}")
        return LoraResult.from_result(out, finished, finished_before=True)
    return _run(config, base, untrained, reporter, dataset)


def save_lora_file(unet, folder: Path) -> Path:
    """The UNet's LoRA in diffusers' format (with peft's adapter config as metadata), as ``folder/pytorch_lora_weights.safetensors``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    tmp = folder / ".lora.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionPipeline.save_lora_weights(
        tmp, unet_lora_layers={k: v.detach().float().cpu() for k, v in layers.items()},
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(), safe_serialization=True,
    )
    final = folder / LORA_WEIGHTS
    (tmp / LORA_WEIGHTS).replace(final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_merged_pipeline(base: Path, unet_source: UNetSource, out: Path) -> Path:
    """``out/pipeline/``: the base's folders (hard-linked) with the trained UNet, LoRA fused in float32 from the saved file."""
    from .components import apply_unet_source, link_tree, load_component

    final = out / PIPELINE_DIR
    tmp = RunFolder.temporary(final)
    shutil.rmtree(tmp, ignore_errors=True)
    for item in sorted(base.iterdir()):
        if item.name == "unet" or item.name.startswith("."):
            continue
        if item.is_dir():
            link_tree(item, tmp / item.name)
        else:
            tmp.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, tmp / item.name)
    unet = apply_unet_source(load_component(base, "unet"), unet_source, base)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    marker = tmp / INIT_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        info["untrained"] = [c for c in info.get("untrained", []) if c != "unet"]
        marker.unlink()  # a hard link to the base's: replaced, never written through
        marker.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    replace_dir(tmp, final)
    return final


def lora_source(out: Path, full: bool) -> UNetSource:
    from .components import folder_sha256

    if full:
        return UNetSource("full", out / FULL_UNET, folder_sha256(out / FULL_UNET))
    return UNetSource("lora", out / LORA_WEIGHTS, file_sha256(out / LORA_WEIGHTS))



def _run(config: LoraConfig, base: Path, untrained: list[str], reporter: Reporter, dataset) -> LoraResult:
    import torch

    from ...models.fingerprint import json_sha256
    from .common import build_caches, empty_text, native_resolution
    from .components import base_hashes, load_component, load_config_file, noise_scheduler, sampling_scheduler
    from .data import Collate, TrainingExamples, dataset_fingerprint, open_training_data
    from .loop import DiffusionTrainer, StageParts, frozen_dtype, make_training_accelerator, place, resolve_precision
    from .objectives import UNetTask
    from .run import make_record, open_run, speaks
    from .validation import make_pipeline, prompt_grid, save_grid, validation_path

    out = Path(config.out)
    if dataset is None:
        dataset = open_training_data(config.data, layout=config.data_layout, image_column=config.image_column,
                                     caption_column=config.caption_column, id_column=config.id_column)
    with reporter.progress("hashing the data", total=len(dataset), unit="img", show=len(dataset) > 1000 and speaks(config)) as advance:
        fingerprint = dataset_fingerprint(dataset, advance)
    from_scratch = config.init is not None or "unet" in untrained
    init_config = load_config_file(config.init, "UNet") if config.init else None
    mixed_precision = resolve_precision(config.mixed_precision, config.cpu)
    accelerator = make_training_accelerator(config, out, mixed_precision)
    resolution = config.resolution or native_resolution(base)
    caption_dropout = caption_dropout_for(config, from_scratch)
    lora_alpha = config.lora_alpha if config.lora_alpha is not None else float(config.rank)
    hashes = base_hashes(base)
    inputs = {
        "base": {name: hashes[name] for name in ("vae", "text_encoder", "tokenizer", "scheduler")}
        | ({} if init_config else {"unet": hashes["unet"]}),
        "init": json_sha256(init_config) if init_config else None,
        "data": {"fingerprint": fingerprint, "images": len(dataset)},
    }
    resolved = {"mixed_precision": mixed_precision, "resolution": resolution, "caption_dropout": caption_dropout,
                "lora_alpha": None if config.full else lora_alpha, "num_processes": accelerator.num_processes,
                "from_scratch": from_scratch}
    status = open_run(config, make_record("train-lora", config, inputs, resolved), main=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        reporter.log(f"{'resuming' if status.resumed else 'training'} {'the whole UNet' if config.full else 'a LoRA'} on "
                     f"{len(dataset)} images at {resolution}px, mixed precision {mixed_precision}")

    device = accelerator.device
    weights_dtype = frozen_dtype(mixed_precision, device)
    vae = place(load_component(base, "vae").requires_grad_(False), device, weights_dtype).eval()
    text_encoder = place(load_component(base, "text_encoder").requires_grad_(False), device, weights_dtype).eval()
    tokenizer = load_component(base, "tokenizer")
    if init_config is not None:
        from diffusers import UNet2DConditionModel

        torch.manual_seed(config.seed)
        unet = UNet2DConditionModel.from_config(init_config)
    else:
        unet = load_component(base, "unet")
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ConfigError(f"the UNet's cross-attention width {unet.config.cross_attention_dim} does not match the text "
                          f"encoder's {text_encoder.config.hidden_size}")
    if config.full:
        place(unet.requires_grad_(True), device, torch.float32)
    else:
        from peft import LoraConfig as PeftLoraConfig

        place(unet.requires_grad_(False), device, weights_dtype)
        torch.manual_seed(config.seed)  # the LoRA's initial weights, like everything else, follow --seed
        try:
            unet.add_adapter(PeftLoraConfig(r=config.rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
                                            target_modules=list(config.target_modules)))
        except ValueError:
            raise ConfigError(f"--target-modules {','.join(config.target_modules)} matched no layer of the UNet "
                              "(its attention layers have to_q, to_k, to_v, to_out.0)") from None
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    examples = TrainingExamples(dataset, range(len(dataset)), resolution, seed=config.seed, random_flip=config.random_flip,
                                fingerprint=fingerprint)
    caches = None
    if config.cache_latents:
        caches = build_caches(examples, vae, text_encoder, tokenizer, cache_dir=config.cache_dir, accelerator=accelerator,
                              reporter=reporter)
    task = UNetTask(unet, vae.config, noise_scheduler(base), caption_dropout=caption_dropout,
                    vae=None if caches else vae, text_encoder=None if caches else text_encoder,
                    empty_text=empty_text(text_encoder, tokenizer, device), noise_offset=config.noise_offset,
                    min_snr_gamma=config.min_snr_gamma)
    prompts = list(config.validation_prompts) or list(dict.fromkeys(c for c in examples.captions if c))[:4] or [""]
    scheduler = sampling_scheduler(base)

    def validate(trainer: DiffusionTrainer, step: int) -> dict:
        pipe = make_pipeline(trainer.unwrapped.unet, vae, text_encoder, tokenizer, scheduler)
        grid = prompt_grid(pipe, prompts, config.validation_seeds, resolution, config.validation_inference_steps,
                           config.validation_guidance_scale, device)
        save_grid(grid, validation_path(out, step))
        return {}

    parts = StageParts("train-lora", task, examples, Collate(None if caches else tokenizer), validate,
                       tracker_config={**config.to_dict(), **resolved})
    trainer = DiffusionTrainer(config, parts, accelerator, out, reporter)
    try:
        trainer.resume()
        state = trainer.train()
        result = {"steps": state.step, "final_loss": state.last_loss, "encoded_latents": caches.encoded_latents if caches else 0}
        if accelerator.is_main_process:
            trained = trainer.unwrapped.unet
            if config.full:
                tmp = RunFolder.temporary(out / FULL_UNET)
                shutil.rmtree(tmp, ignore_errors=True)
                trainer.with_eval_weights(lambda: trained.save_pretrained(tmp, safe_serialization=True))
                replace_dir(tmp, out / FULL_UNET)
                result["weights"] = FULL_UNET
            else:
                trainer.with_eval_weights(lambda: save_lora_file(trained, out))
                result["weights"] = LORA_WEIGHTS
            result["sha256"] = lora_source(out, config.full).sha256
            if config.merge:
                write_merged_pipeline(base, lora_source(out, config.full), out)
                result["pipeline"] = PIPELINE_DIR
            write_result(out, result)
        accelerator.wait_for_everyone()
    finally:
        trainer.close()
    data = read_result(out)
    return LoraResult.from_result(out, data)
