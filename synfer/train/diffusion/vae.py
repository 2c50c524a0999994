"""``train_vae()``: train (or fine-tune) the base's AutoencoderKL; what ``synfer train-vae`` runs.

A base trained from scratch needs its own autoencoder, and the autoencoder caps every image the
model will make, so the run reports reconstruction PSNR and MAE on held-out images at every
validation. After training, the latent scaling factor is measured (1 / std of posterior samples of
training images, Stable Diffusion's rule; 0.18215 for its own VAE) and written into the VAE's config.

```
RUN/vae/      the trained AutoencoderKL (diffusers folder, safetensors)
RUN/model/    the base with this VAE in place (other components hard-linked): --base for train-lora
```
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...data.run_folder import RunFolder, replace_dir
from ...errors import ConfigError
from ...progress import Reporter, SilentReporter
from .components import INIT_MARKER, check_base
from .config import VaeConfig
from .run import check_out, finished_result, read_result, write_result

VAE_DIR = "vae"
MODEL_DIR = "model"
GRID_IMAGES = 8


@dataclass
class VaeResult:
    out: Path
    steps: int
    final_loss: float | None
    vae: Path
    model: Path
    psnr: float | None
    mae: float | None
    scaling_factor: float
    finished_before: bool = False

    @classmethod
    def from_result(cls, out: Path, data: dict, finished_before: bool = False) -> VaeResult:
        return cls(out, data["steps"], data.get("final_loss"), out / VAE_DIR, out / MODEL_DIR, data.get("val_psnr"),
                   data.get("val_mae"), data["scaling_factor"], finished_before)


def held_out(ids: list[str], fraction: float) -> list[bool]:
    """Which ids are held out: a fixed ``fraction`` chosen by a hash of each id (stable when the dataset grows)."""
    if fraction <= 0:
        return [False] * len(ids)
    return [int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction for i in ids]


def reconstruction_metrics(vae, images, device) -> tuple[float, float, list]:
    """Mean PSNR (dB, images in [0, 1]) and MAE (0-1 units) of decoding the posterior mean, and the reconstructions."""
    import torch

    psnrs, maes, decoded_all = [], [], []
    for start in range(0, len(images), 16):
        batch = torch.stack(images[start : start + 16]).to(device=device, dtype=vae.dtype)
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.mean).sample.float().clamp(-1, 1)
        a, b = (decoded + 1) / 2, (batch.float() + 1) / 2
        mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs += (10 * torch.log10(1.0 / mse)).tolist()
        maes += (a - b).abs().flatten(1).mean(1).tolist()
        decoded_all += list(decoded.cpu())
    return sum(psnrs) / len(psnrs), sum(maes) / len(maes), decoded_all


def train_vae(config: VaeConfig, reporter: Reporter | None = None, *, dataset=None, val_dataset=None) -> VaeResult:
    """Train the autoencoder; ``dataset`` / ``val_dataset`` replace ``config.data`` / ``config.val_data`` (tests)."""
    reporter = reporter or SilentReporter()
    check_out(config)
    out = Path(config.out)
    base = check_base(config.base)
    finished = finished_result(config, "train-vae")
    if finished is not None:
        reporter.log(f"{out} is a finished run; its autoencoder is {out / VAE_DIR}")
        return VaeResult.from_result(out, finished, finished_before=True)
    return _run(config, base, reporter, dataset, val_dataset)


def write_model(base: Path, vae_folder: Path, out: Path) -> Path:
    """``out/model/``: the base (hard-linked) with the trained VAE; its init marker no longer lists the VAE as untrained."""
    from .components import link_tree

    final = out / MODEL_DIR
    tmp = RunFolder.temporary(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in sorted(base.iterdir()):
        if item.name in (VAE_DIR, INIT_MARKER) or item.name.startswith("."):
            continue
        if item.is_dir():
            link_tree(item, tmp / item.name)
        else:
            shutil.copy2(item, tmp / item.name)
    link_tree(vae_folder, tmp / VAE_DIR)
    marker = base / INIT_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        info["untrained"] = [c for c in info.get("untrained", []) if c != "vae"]
        (tmp / INIT_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    replace_dir(tmp, final)
    return final


def _run(config: VaeConfig, base: Path, reporter: Reporter, dataset, val_dataset) -> VaeResult:
    import torch

    from ...models.fingerprint import json_sha256
    from .common import native_resolution
    from .components import folder_sha256, load_component, load_config_file
    from .data import Collate, TrainingExamples, dataset_fingerprint, dataset_ids, open_training_data, prepare_image
    from .loop import DiffusionTrainer, StageParts, make_training_accelerator, place, resolve_precision
    from .objectives import VAETask, sample_posterior
    from .run import make_record, open_run, speaks
    from .validation import image_grid, save_grid, to_pil, validation_path

    out = Path(config.out)
    open_options = dict(layout=config.data_layout, image_column=config.image_column, caption_column=config.caption_column,
                        id_column=config.id_column)
    if dataset is None:
        dataset = open_training_data(config.data, **open_options)
    ids = dataset_ids(dataset)
    if val_dataset is None and config.val_data is not None:
        val_dataset = open_training_data(config.val_data, **open_options)
    if val_dataset is not None:
        train_positions = list(range(len(dataset)))
        val_items = [(val_dataset, i) for i in range(min(len(val_dataset), config.val_images))]
    else:
        held = held_out(ids, config.val_fraction)
        train_positions = [i for i, h in enumerate(held) if not h]
        val_items = [(dataset, i) for i, h in enumerate(held) if h][: config.val_images]
    with reporter.progress("hashing the data", total=len(dataset), unit="img", show=len(dataset) > 1000 and speaks(config)) as advance:
        fingerprint = dataset_fingerprint(dataset, advance)
    init_config = load_config_file(config.init, "AutoencoderKL") if config.init else None
    mixed_precision = resolve_precision(config.mixed_precision, config.cpu)
    accelerator = make_training_accelerator(config, out, mixed_precision)
    main = accelerator.is_main_process
    resolution = config.resolution or native_resolution(base)
    inputs = {
        "vae": json_sha256(init_config) if init_config else folder_sha256(base / VAE_DIR),
        "data": {"fingerprint": fingerprint, "images": len(dataset), "train": len(train_positions)},
        "val": {"fingerprint": dataset_fingerprint(val_dataset), "images": len(val_dataset)} if val_dataset is not None else None,
    }
    resolved = {"mixed_precision": mixed_precision, "resolution": resolution, "num_processes": accelerator.num_processes,
                "from_scratch": init_config is not None}
    status = open_run(config, make_record("train-vae", config, inputs, resolved), main=main)
    accelerator.wait_for_everyone()
    if main:
        reporter.log(f"{'resuming' if status.resumed else 'training'} the autoencoder on {len(train_positions)} images at "
                     f"{resolution}px, {len(val_items)} held out for PSNR/MAE")

    if init_config is not None:
        from diffusers import AutoencoderKL

        torch.manual_seed(config.seed)
        vae = AutoencoderKL.from_config(init_config)
    else:
        vae = load_component(base, "vae")
    place(vae.requires_grad_(True), accelerator.device, torch.float32)
    if 2 ** (len(vae.config.block_out_channels) - 1) > resolution:
        raise ConfigError(f"--resolution {resolution} is smaller than the autoencoder's downsampling factor")
    examples = TrainingExamples(dataset, train_positions, resolution, seed=config.seed, random_flip=config.random_flip,
                                fingerprint=fingerprint)
    task = VAETask(vae, kl_weight=config.kl_weight, reconstruction=config.reconstruction, edge_weight=config.edge_weight)
    val_images = [prepare_image(source[i].image, resolution) for source, i in val_items]
    last = {}

    def validate(trainer: DiffusionTrainer, step: int) -> dict:
        if not val_images:
            return {}
        model = trainer.unwrapped.vae
        psnr, mae, decoded = reconstruction_metrics(model, val_images, accelerator.device)
        shown = min(GRID_IMAGES, len(val_images))
        save_grid(image_grid([to_pil(torch.stack(val_images[:shown])), to_pil(torch.stack(decoded[:shown]))]), validation_path(out, step))
        last.update(val_psnr=psnr, val_mae=mae)
        return {"val_psnr": psnr, "val_mae": mae}

    parts = StageParts("train-vae", task, examples, Collate(), validate, tracker_config={**config.to_dict(), **resolved})
    trainer = DiffusionTrainer(config, parts, accelerator, out, reporter)
    try:
        trainer.resume()
        state = trainer.train()
        if main:
            trained = trainer.unwrapped.vae

            def save() -> float:
                scaling = measure_scaling_factor(trained, examples, config.scaling_images, accelerator.device, sample_posterior)
                trained.register_to_config(scaling_factor=scaling)
                tmp = RunFolder.temporary(out / VAE_DIR)
                shutil.rmtree(tmp, ignore_errors=True)
                trained.save_pretrained(tmp, safe_serialization=True)
                replace_dir(tmp, out / VAE_DIR)
                return scaling

            with torch.no_grad():
                scaling = trainer.with_eval_weights(save)
            write_model(base, out / VAE_DIR, out)
            write_result(out, {"steps": state.step, "final_loss": state.last_loss, "scaling_factor": scaling,
                               "val_psnr": last.get("val_psnr"), "val_mae": last.get("val_mae"), "vae": VAE_DIR, "model": MODEL_DIR})
        accelerator.wait_for_everyone()
    finally:
        trainer.close()
    return VaeResult.from_result(out, read_result(out))


def measure_scaling_factor(vae, examples, count: int, device, sample_posterior) -> float:
    """1 / std of posterior samples of up to ``count`` training images (the latents then have unit variance)."""
    import torch

    from .data import prepare_image

    generator = torch.Generator(device=device).manual_seed(0)
    values = []
    positions = examples.positions[:count]
    for start in range(0, len(positions), 16):
        pixels = torch.stack([prepare_image(examples.dataset[p].image, examples.resolution) for p in positions[start : start + 16]])
        moments = vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist.parameters
        values.append(sample_posterior(moments, generator).flatten())
    std = float(torch.cat(values).std())
    return 1.0 / std if std > 0 and math.isfinite(std) else 1.0
