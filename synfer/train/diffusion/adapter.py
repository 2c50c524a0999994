"""``train_adapter()``: SynFER's stage 2, the AU adapter learns AUs on a frozen UNet; what ``synfer train-adapter`` runs.

```python
from synfer.train.diffusion import AdapterConfig, train_adapter

train_adapter(AdapterConfig(base="/models/sd15", lora="runs/lora", data="FEText/", aus="runs/fetext-aus", out="runs/adapter"))
```

The base UNet, with the train-lora run's LoRA fused in (or its fully trained UNet), is frozen
(half precision on a GPU); the :class:`~synfer.models.au_adapter.AUAdapter` trains in float32. The
AU table's scores become intensities by the ``--au-policy`` (recorded with the adapter), images
without a row in the table are left out (and counted). Outputs:

```
RUN/au_adapter/config.json + diffusion_pytorch_model.safetensors   the adapter (AUAdapter.from_pretrained)
RUN/au_adapter/training.json   AU policy, dropout and augmentation settings, hashes of base, LoRA, AU table, data
```
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...aus import MAX_INTENSITY, NUM_AUS
from ...data.au_table import AUScores, read_au_table
from ...data.format import write_json
from ...data.run_folder import RunFolder, replace_dir
from ...errors import ConfigError, DatasetError
from ...progress import Reporter, SilentReporter
from .config import AdapterConfig
from .run import check_out, finished_result, write_result

ADAPTER_DIR = "au_adapter"
ADAPTER_TRAINING = "training.json"
AU_TABLE_FILE = "aus.parquet"


@dataclass
class AdapterResult:
    out: Path
    steps: int
    final_loss: float | None
    adapter: Path
    images: int
    left_out: int = 0
    finished_before: bool = False


def resolve_au_table(aus: str | None, data: str | None) -> Path:
    """``--aus``: an annotate-aus run folder (its aus.parquet) or a table file; None: ``DATA/aus.parquet`` when there is one."""
    if aus is None:
        if data is not None and (Path(data) / AU_TABLE_FILE).is_file():
            return Path(data) / AU_TABLE_FILE
        raise ConfigError("--aus is needed: an AU table (synfer annotate-aus run folder or its aus.parquet)")
    path = Path(aus).expanduser()
    if path.is_dir():
        if not (path / AU_TABLE_FILE).is_file():
            raise DatasetError(f"--aus {aus} is a folder without {AU_TABLE_FILE}; give an annotate-aus run folder or an AU table file")
        return path / AU_TABLE_FILE
    if not path.is_file():
        raise DatasetError(f"--aus {aus} does not exist")
    return path


def match_aus(table: AUScores, ids: list[str], *, table_name: str, data_name: str) -> tuple[list[int], np.ndarray]:
    """Dataset positions that have a table row, and those rows; an error when no id matches."""
    rows = {image_id.removeprefix("./"): i for i, image_id in enumerate(table.ids)}
    positions, picked = [], []
    for position, image_id in enumerate(ids):
        row = rows.get(image_id.removeprefix("./"))
        if row is not None:
            positions.append(position)
            picked.append(row)
    if not positions:
        raise DatasetError(
            f"the AU table {table_name} matches none of the {len(ids)} images of {data_name} (0 of its {len(table)} ids matched; "
            f"table ids look like {table.ids[0] if table.ids else '-'!r}, image ids like {ids[0] if ids else '-'!r}); "
            "ids are paths relative to the dataset folder"
        )
    return positions, np.asarray(picked, dtype=np.int64)


def au_intensities(table: AUScores, policy: str, threshold: float | None, present: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """The table's scores as intensities 0-5 under ``policy``, the known-mask, and the resolved policy (recorded)."""
    kind = table.kind
    if policy == "auto":
        policy = "intensity" if kind == "intensity" else "threshold"
    scores, known = table.scores.astype(np.float32), table.known.copy()
    if policy == "intensity":
        if kind != "intensity":
            raise ConfigError(
                "--au-policy intensity needs an intensity table; this one holds detector probabilities (use threshold or scale)"
            )
        values = np.clip(scores, 0.0, MAX_INTENSITY)
        resolved = {"policy": "intensity"}
    elif policy == "scale":
        if kind != "probability":
            raise ConfigError("--au-policy scale turns probabilities into intensities; this table already holds intensities")
        values = np.clip(scores * MAX_INTENSITY, 0.0, MAX_INTENSITY)
        resolved = {"policy": "scale", "factor": MAX_INTENSITY}
    else:
        cut = threshold if threshold is not None else (table.suggested_threshold if table.suggested_threshold is not None else 0.5)
        if kind == "probability" and cut > 1:
            raise ConfigError(f"--au-threshold {cut} is above 1, but the table holds probabilities")
        values = np.where(scores >= cut, np.float32(present), np.float32(0.0))
        resolved = {"policy": "threshold", "threshold": float(cut), "present_intensity": float(present)}
    values = np.where(known, values, 0.0).astype(np.float32)
    return values.reshape(-1, NUM_AUS), known.reshape(-1, NUM_AUS), {"scores": kind, **resolved}


def train_adapter(config: AdapterConfig, reporter: Reporter | None = None, *, dataset=None) -> AdapterResult:
    """Train the AU adapter on a frozen (LoRA-fused) UNet; ``dataset`` replaces ``config.data`` (tests)."""
    from .common import check_trained_base
    from .components import check_base, resolve_unet_source, untrained_components

    reporter = reporter or SilentReporter()
    check_out(config)
    out = Path(config.out)
    base = check_base(config.base)
    source = resolve_unet_source(config.lora) if config.lora else None
    needs_unet = source is None or source.kind == "lora"
    if needs_unet and "unet" in untrained_components(base):
        raise ConfigError(f"the UNet of --base {config.base} is untrained: give --lora a train-lora --full run, whose UNet replaces it")
    check_trained_base(base, needs_unet=False)
    table_path = resolve_au_table(config.aus, config.data)
    finished = finished_result(config, "train-adapter")
    if finished is not None:
        reporter.log(f"{out} is a finished run; its adapter is {out / ADAPTER_DIR}")
        return AdapterResult(out, finished["steps"], finished.get("final_loss"), out / ADAPTER_DIR, finished["images"],
                             finished.get("left_out", 0), True)
    table = read_au_table(table_path)
    return _run(config, base, source, table_path, table, reporter, dataset)


def _run(config: AdapterConfig, base: Path, source, table_path: Path, table: AUScores, reporter: Reporter, dataset) -> AdapterResult:
    import torch

    from ...models.au_adapter import AUAdapter
    from ...pipelines.loading import load_au_adapter
    from .common import native_resolution
    from .components import (
        apply_unet_source,
        base_hashes,
        file_sha256,
        folder_sha256,
        load_component,
        lora_base_mismatch,
        noise_scheduler,
        sampling_scheduler,
    )
    from .data import TrainingExamples, dataset_captions, dataset_fingerprint, dataset_ids, open_training_data
    from .loop import make_training_accelerator, resolve_precision
    from .run import make_record, open_run, speaks

    out = Path(config.out)
    data_name = config.data or "the dataset"
    if dataset is None:
        dataset = open_training_data(config.data, layout=config.data_layout, image_column=config.image_column,
                                     caption_column=config.caption_column, id_column=config.id_column)
    captions = dataset_captions(dataset)
    if not any(c.strip() for c in captions):
        raise DatasetError(f"{data_name} has no captions (every caption is empty); train-adapter learns AUs next to captions")
    positions, rows = match_aus(table, dataset_ids(dataset), table_name=str(table_path), data_name=data_name)
    values, known, policy = au_intensities(table, config.au_policy, config.au_threshold, config.present_intensity)
    values, known = values[rows], known[rows]
    left_out = len(dataset) - len(positions)
    with reporter.progress("hashing the data", total=len(dataset), unit="img", show=len(dataset) > 1000 and speaks(config)) as advance:
        fingerprint = dataset_fingerprint(dataset, advance)

    mixed_precision = resolve_precision(config.mixed_precision, config.cpu)
    accelerator = make_training_accelerator(config, out, mixed_precision)
    main = accelerator.is_main_process
    resolution = config.resolution or native_resolution(base)
    hashes = base_hashes(base)
    unet = load_component(base, "unet")
    if source is not None:
        unet = apply_unet_source(unet, source, base)
        warning = lora_base_mismatch(source, hashes["unet"])
        if warning and main:
            reporter.log(warning)
    if config.init_adapter is not None:
        adapter = load_au_adapter(config.init_adapter)
        try:
            adapter.attach(unet)
        except ConfigError as error:
            raise ConfigError(f"--init-adapter {config.init_adapter} does not fit this UNet: {error}") from None
        adapter.detach()
        init_hash = folder_sha256(config.init_adapter)
    else:
        torch.manual_seed(config.seed)
        adapter = AUAdapter.from_unet(unet, num_tokens=config.num_tokens, hidden_dim=config.hidden_dim)
        init_hash = None
    inputs = {
        "base": hashes,
        "lora": source.describe() if source is not None else None,
        "aus": {"path": str(table_path), "sha256": file_sha256(table_path), "scores": table.kind, "source": table.source},
        "data": {"fingerprint": fingerprint, "images": len(dataset), "with_aus": len(positions)},
        "init_adapter": init_hash,
    }
    inputs["lora"] = {k: v for k, v in inputs["lora"].items() if k != "path"} if inputs["lora"] else None
    inputs["aus"] = {k: v for k, v in inputs["aus"].items() if k != "path"}
    resolved = {"mixed_precision": mixed_precision, "resolution": resolution, "num_processes": accelerator.num_processes,
                "au_policy": policy, "num_tokens": adapter.config.num_tokens, "hidden_dim": adapter.config.hidden_dim}
    status = open_run(config, make_record("train-adapter", config, inputs, resolved), main=main)
    accelerator.wait_for_everyone()
    if main:
        reporter.log(f"{'resuming' if status.resumed else 'training'} the AU adapter on {len(positions)} images "
                     f"({left_out} without AUs left out) at {resolution}px, AU policy {policy['policy']}, "
                     f"mixed precision {mixed_precision}")

    vae, text_encoder, tokenizer = load_component(base, "vae"), load_component(base, "text_encoder"), load_component(base, "tokenizer")
    examples = TrainingExamples(dataset, positions, resolution, seed=config.seed, random_flip=config.random_flip,
                                fingerprint=fingerprint, aus=values, known=known)
    trainer = build_adapter_trainer(
        config, unet=unet, adapter=adapter, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        noise_scheduler=noise_scheduler(base), examples=examples, accelerator=accelerator, mixed_precision=mixed_precision,
        run_dir=out, reporter=reporter, sampling_scheduler=sampling_scheduler(base),
        tracker_config={**config.to_dict(), "au_policy": policy["policy"], "mixed_precision": mixed_precision},
    )
    try:
        trainer.resume()
        state = trainer.train()
        if main:
            trained = trainer.unwrapped.adapter
            final = out / ADAPTER_DIR
            tmp = RunFolder.temporary(final)
            shutil.rmtree(tmp, ignore_errors=True)
            trainer.with_eval_weights(lambda: trained.save_pretrained(tmp, safe_serialization=True))
            write_json(tmp / ADAPTER_TRAINING, {
                "format": "synfer-au-adapter-training",
                "au_policy": policy,
                "au_noise": config.au_noise,
                "dropout": {"text": config.drop_text, "aus": config.drop_aus, "both": config.drop_both},
                "augmentation": {"random_flip": config.random_flip, "flip_swaps_left_right_aus": True, "resolution": resolution},
                "inputs": inputs,
                "steps": state.step,
                "ema_decay": config.ema_decay,
            })
            replace_dir(tmp, final)
            write_result(out, {"steps": state.step, "final_loss": state.last_loss, "images": len(positions), "left_out": left_out,
                               "adapter": ADAPTER_DIR, "sha256": folder_sha256(final)})
        accelerator.wait_for_everyone()
    finally:
        adapter.detach()
        trainer.close()
    return AdapterResult(out, state.step, state.last_loss, out / ADAPTER_DIR, len(positions), left_out)


def build_adapter_trainer(config: AdapterConfig, *, unet, adapter, vae, text_encoder, tokenizer, noise_scheduler,
                          examples, accelerator, mixed_precision: str, run_dir: Path | None = None, reporter: Reporter | None = None,
                          sampling_scheduler=None, tracker_config: dict | None = None):
    """The train-adapter loop around in-memory components: what ``synfer train-adapter`` runs, and what benchmarks time.

    Freezes the UNet, VAE and text encoder (half precision on a GPU under mixed precision), keeps the
    adapter in float32, fills the latent cache when ``config.cache_latents``, and returns a
    :class:`~synfer.train.diffusion.loop.DiffusionTrainer` whose ``train_step(batch)`` is one step
    (``trainer.caches`` holds the caches, or None). Validation (the AU sweep grid) runs when
    ``run_dir`` and ``sampling_scheduler`` are given.
    """
    import torch

    from .common import build_caches, empty_text
    from .data import Collate
    from .loop import DiffusionTrainer, StageParts, frozen_dtype, place
    from .objectives import AdapterTask
    from .validation import au_sweep_grid, make_pipeline, save_grid, validation_path

    reporter = reporter or SilentReporter()
    device = accelerator.device
    weights_dtype = frozen_dtype(mixed_precision, device)
    vae = place(vae.requires_grad_(False), device, weights_dtype).eval()
    text_encoder = place(text_encoder.requires_grad_(False), device, weights_dtype).eval()
    place(unet.requires_grad_(False), device, weights_dtype)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    place(adapter.requires_grad_(True), device, torch.float32)
    caches = None
    if config.cache_latents:
        caches = build_caches(examples, vae, text_encoder, tokenizer, cache_dir=config.cache_dir, accelerator=accelerator,
                              reporter=reporter)
    task = AdapterTask(unet, adapter, vae.config, noise_scheduler, drop_text=config.drop_text, drop_aus=config.drop_aus,
                       drop_both=config.drop_both, au_noise=config.au_noise, vae=None if caches else vae,
                       text_encoder=None if caches else text_encoder, empty_text=empty_text(text_encoder, tokenizer, device),
                       noise_offset=config.noise_offset, min_snr_gamma=config.min_snr_gamma)
    prompt = config.validation_prompt or next((c for c in examples.captions if c.strip()), "")
    resolution = examples.resolution
    validate = None
    if run_dir is not None and sampling_scheduler is not None:
        def validate(trainer: DiffusionTrainer, step: int) -> dict:
            task = trainer.unwrapped
            pipe = make_pipeline(task.unet, vae, text_encoder, tokenizer, sampling_scheduler, adapter=task.adapter)
            grid = au_sweep_grid(pipe, prompt, config.validation_seeds[0], config.validation_aus, resolution,
                                 config.validation_inference_steps, config.validation_guidance_scale, device)
            save_grid(grid, validation_path(run_dir, step))
            return {}

    parts = StageParts("train-adapter", task, examples, Collate(None if caches else tokenizer), validate,
                       tracker_config=tracker_config or {})
    trainer = DiffusionTrainer(config, parts, accelerator, run_dir, reporter)
    trainer.caches = caches
    return trainer
