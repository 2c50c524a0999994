"""``build_model()``: base + LoRA (fused) + AU adapter -> one synfer model folder; what ``synfer build-model`` runs.

```
MODEL/  model_index.json, unet/ (LoRA fused, float32 where the base is), vae/, text_encoder/, tokenizer/, scheduler/,
        au_adapter/ (config.json + safetensors), training.json
```

``SynFERPipeline.from_pretrained(MODEL)`` and ``synfer generate --model MODEL`` load it. ``training.json``
holds the SHA-256 of everything that went in (each base component's folder, the LoRA file or trained
UNet, the adapter folder, the AU table), the fingerprints of the data each stage trained on, and the
content hashes of the built components (those ``synfer generate`` records in a dataset's manifest).
An adapter run records the base and LoRA it was trained with; building it onto others is refused
unless ``allow_mismatch``, since the adapter learnt to steer that UNet.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...data.format import write_json
from ...data.run_folder import RunFolder, replace_dir
from ...errors import ConfigError, ModelLoadError, first_line
from ...progress import Reporter, SilentReporter
from .config import BuildModelConfig

TRAINING_NAME = "training.json"
BUILD_FORMAT = "synfer-model-training"


@dataclass
class BuildResult:
    out: Path
    training: dict


def resolve_adapter_folder(path: str | Path) -> Path:
    """A train-adapter run folder (its ``au_adapter/``) or an adapter folder (``config.json`` + safetensors)."""
    root = Path(path).expanduser()
    if (root / "au_adapter" / "config.json").is_file():
        return root / "au_adapter"
    if (root / "config.json").is_file():
        return root
    raise ModelLoadError(f"--adapter {path} holds no AU adapter (no au_adapter/ and no config.json); give a train-adapter run folder")


def _scheduler(base: Path):
    import diffusers

    config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    cls = getattr(diffusers, str(config.get("_class_name", "DDIMScheduler")), None)
    if cls is None:
        cls = diffusers.DDIMScheduler
    return cls.from_pretrained(str(base), subfolder="scheduler", local_files_only=True)


def _short(sha256: str | None) -> str:
    return "none" if sha256 is None else sha256[:12] + "..."


def _check_recorded(name: str, recorded: str | None, given: str | None, allow: bool, reporter: Reporter) -> None:
    if recorded == given:
        return
    message = f"the adapter was trained with another {name} than the one given (recorded {_short(recorded)}, given {_short(given)})"
    if not allow:
        raise ConfigError(f"{message}; give the same --base/--lora it was trained with, or --allow-mismatch")
    reporter.log(f"warning: {message}")


def build_model(config: BuildModelConfig, reporter: Reporter | None = None) -> BuildResult:
    """Fuse the LoRA into the base UNet, add the adapter, write the model folder (aside, then swapped in)."""
    import torch

    from ...models.fingerprint import pipeline_fingerprint
    from ...pipelines.loading import load_au_adapter
    from ...pipelines.pipeline_synfer import SynFERPipeline
    from .common import check_trained_base
    from .components import (
        apply_unet_source,
        base_hashes,
        folder_sha256,
        load_component,
        lora_base_mismatch,
        resolve_unet_source,
        untrained_components,
    )

    reporter = reporter or SilentReporter()
    base = check_trained_base(config.base, needs_unet=False)
    source = resolve_unet_source(config.lora) if config.lora else None
    if (source is None or source.kind == "lora") and "unet" in untrained_components(base):
        raise ConfigError(f"the UNet of --base {config.base} is untrained: give --lora the train-lora --full run that trained it")
    adapter_folder = resolve_adapter_folder(config.adapter)
    adapter_training = {}
    if (adapter_folder / "training.json").is_file():
        adapter_training = json.loads((adapter_folder / "training.json").read_text())
    recorded = adapter_training.get("inputs", {})
    hashes = base_hashes(base)
    if recorded.get("base") and recorded["base"].get("unet"):
        _check_recorded("base UNet", recorded["base"]["unet"], hashes["unet"], config.allow_mismatch, reporter)
    if "lora" in recorded:
        _check_recorded("LoRA", (recorded["lora"] or {}).get("sha256"), source.sha256 if source else None, config.allow_mismatch, reporter)

    unet = load_component(base, "unet")
    if source is not None:
        unet = apply_unet_source(unet, source, base)
        warning = lora_base_mismatch(source, hashes["unet"])
        if warning:
            reporter.log(warning)
    adapter = load_au_adapter(adapter_folder)
    try:
        adapter.attach(unet)
    except ConfigError as error:
        raise ModelLoadError(f"the adapter {adapter_folder} does not fit this UNet: {first_line(error)}") from None
    adapter.detach()
    if adapter.dtype != unet.dtype:
        adapter.to(dtype=unet.dtype)
    pipe = SynFERPipeline(vae=load_component(base, "vae"), text_encoder=load_component(base, "text_encoder"),
                          tokenizer=load_component(base, "tokenizer"), unet=unet, scheduler=_scheduler(base), au_adapter=adapter)
    out = Path(config.out)
    tmp = RunFolder.temporary(out)
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.no_grad():
        pipe.save_pretrained(tmp, safe_serialization=True)
    lora_record = source.record.get("inputs", {}) if source is not None else {}
    training = {
        "format": BUILD_FORMAT,
        "version": 1,
        "inputs": {
            "base": {"path": str(base), **hashes},
            "lora": source.describe() if source is not None else None,
            "adapter": {"path": str(adapter_folder), "sha256": folder_sha256(adapter_folder)},
            "au_table": recorded.get("aus"),
            "au_policy": adapter_training.get("au_policy"),
        },
        "data": {
            "train_lora": lora_record.get("data"),
            "train_adapter": recorded.get("data"),
        },
        "components": pipeline_fingerprint(pipe),
    }
    write_json(tmp / TRAINING_NAME, training)
    replace_dir(tmp, out)
    reporter.log(f"wrote {out}: load it with synfer generate --model {out}")
    return BuildResult(out, training)
