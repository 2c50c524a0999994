"""The folders the training stages read and write: Stable-Diffusion-shaped bases, LoRA runs, hashes.

A *base* is a diffusers folder with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and
``scheduler/`` (Stable Diffusion 1.5, a synfer model, or what ``synfer init-model`` writes). A
folder made by ``synfer init-model`` (or ``train-vae``'s ``RUN/model/``) carries ``synfer_init.json``
naming its components that are still untrained, so that a stage refuses to build on random weights.
Weights load as safetensors only (``.fp16`` variants too) and never from the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelLoadError, first_line

BASE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_REQUIRED_FILES = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "scheduler": ("scheduler_config.json",),
}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
INIT_MARKER = "synfer_init.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
FULL_UNET = "unet"
RUN_RECORD = "training_config.json"
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora.down.weight", ".lora.up.weight", ".alpha")


# -- hashing ------------------------------------------------------------------------------------------

def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(path: str | os.PathLike) -> str:
    """SHA-256 over every file of a folder: relative names and contents, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(root).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def component_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a component folder that loading reads: configs, tokenizer files, the weights of the variant loaded.

    Hub folders also hold ``.bin``, ``.fp16`` and ``non_ema`` copies of the weights; they are not
    read, so they are not hashed (Stable Diffusion 1.5's UNet folder holds five copies).
    """
    root = Path(folder)
    variant = _variant(root)
    files = []
    for file in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        if file.suffix in (".json", ".txt", ".model"):
            files.append(file)
        elif file.suffix == ".safetensors":
            qualifiers = file.name.split(".")[1:-1]
            if qualifiers == ([variant] if variant else []):
                files.append(file)
    return files


def component_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 over the files a component loads from (:func:`component_files`): names and contents."""
    root = Path(folder)
    digest = hashlib.sha256()
    for file in component_files(root):
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def base_hashes(base: str | os.PathLike) -> dict[str, str]:
    """The SHA-256 of each base component, over the files it loads from."""
    return {name: component_sha256(Path(base) / name) for name in BASE_COMPONENTS}


# -- bases --------------------------------------------------------------------------------------------

def check_base(base: str | os.PathLike, option: str = "--base") -> Path:
    """``base`` as a Path when it is Stable-Diffusion-shaped; otherwise one line naming what is missing."""
    root = Path(base).expanduser()
    if not root.is_dir():
        raise ModelLoadError(f"{option} {base} does not exist (give a Stable Diffusion folder, or make one with synfer init-model)")
    missing = [f"{name}/{files[0]}" for name, files in _REQUIRED_FILES.items() if not any((root / name / f).is_file() for f in files)]
    if not any((root / "tokenizer" / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("tokenizer/")
    if missing:
        raise ModelLoadError(
            f"{option} {base} is not a Stable-Diffusion-shaped folder (missing {', '.join(missing)}); it needs unet/, vae/, "
            "text_encoder/, tokenizer/ and scheduler/ as diffusers writes them (synfer init-model makes one)"
        )
    return root


def untrained_components(base: str | os.PathLike) -> list[str]:
    """The components ``synfer init-model`` left with random weights (empty for any other folder)."""
    marker = Path(base) / INIT_MARKER
    if not marker.is_file():
        return []
    return list(json.loads(marker.read_text()).get("untrained", []))


def _variant(folder: Path) -> str | None:
    """``fp16`` when a component folder holds only ``.fp16.safetensors`` weights."""
    plain = [p for p in folder.glob("*.safetensors") if ".fp16." not in p.name]
    return "fp16" if not plain and list(folder.glob("*.fp16.safetensors")) else None


def load_component(base: str | os.PathLike, name: str, *, path: str | os.PathLike | None = None):
    """One component of a base (``unet``, ``vae``, ``text_encoder``, ``tokenizer``), or a model folder at ``path``."""
    folder = Path(path) if path is not None else Path(base) / name
    try:
        if name == "tokenizer":
            from transformers import CLIPTokenizer

            return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        if name == "text_encoder":
            from transformers import CLIPTextModel

            return CLIPTextModel.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, variant=_variant(folder))
        from diffusers import AutoencoderKL, UNet2DConditionModel

        cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[name]
        return cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, variant=_variant(folder))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"cannot load the {name} from {folder}: {first_line(error)}") from None


def noise_scheduler(base: str | os.PathLike):
    """The base's noise schedule as a ``DDPMScheduler`` (what training adds noise with)."""
    from diffusers import DDPMScheduler

    try:
        return DDPMScheduler.from_pretrained(str(base), subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read the scheduler of {base}: {first_line(error)}") from None


def sampling_scheduler(base: str | os.PathLike):
    """A DDIM scheduler on the base's noise schedule, for validation images."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(noise_scheduler(base).config)


def load_config_file(path: str | os.PathLike, what: str) -> dict:
    """A model config from a ``config.json`` file or a folder holding one."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read the {what} config {file}: {error}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file} is not a {what} config (a JSON object)")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder by hard links where the filesystem allows (no second copy of big weights), else by copying."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(Path(source).rglob("*")):
        destination = target / item.relative_to(source)
        if item.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item, destination)
        except OSError:
            shutil.copy2(item, destination)


# -- LoRA runs ----------------------------------------------------------------------------------------

@dataclass
class UNetSource:
    """What ``--lora`` names: LoRA weights to fuse (``kind="lora"``) or a fully trained UNet (``kind="full"``)."""

    kind: str
    path: Path  # the LoRA file, or the unet/ folder
    sha256: str
    record: dict = field(default_factory=dict)  # the train-lora run's training_config.json, when there is one

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256}


def resolve_unet_source(path: str | os.PathLike, option: str = "--lora") -> UNetSource:
    """A train-lora run folder, a folder with ``pytorch_lora_weights.safetensors``, or such a file."""
    root = Path(path).expanduser()
    record: dict = {}
    if root.is_dir() and (root / RUN_RECORD).is_file():
        try:
            record = json.loads((root / RUN_RECORD).read_text())
        except ValueError:
            record = {}
    if root.is_file():
        if root.suffix != ".safetensors":
            raise ModelLoadError(f"{option} {path} is not a safetensors file (LoRA weights are read as safetensors only)")
        return UNetSource("lora", root, file_sha256(root), record)
    if (root / LORA_WEIGHTS).is_file():
        return UNetSource("lora", root / LORA_WEIGHTS, file_sha256(root / LORA_WEIGHTS), record)
    if (root / FULL_UNET / "config.json").is_file():
        return UNetSource("full", root / FULL_UNET, folder_sha256(root / FULL_UNET), record)
    if root.is_dir() and record:
        raise ModelLoadError(f"{option} {path} is a training run that has not finished (no {LORA_WEIGHTS} or unet/ yet)")
    raise ModelLoadError(f"{option} {path} holds no LoRA ({LORA_WEIGHTS}) and no trained unet/; give a synfer train-lora run folder")


def lora_modules(state_dict: dict) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{module path: {"down": shape, "up": shape}}`` from a LoRA state dict in diffusers' or peft's key names."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix("unet.")
        for suffix in _LORA_SUFFIXES:
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                part = "down" if suffix in (".lora_A.weight", ".lora.down.weight") else "up" if "alpha" not in suffix else "alpha"
                modules.setdefault(module, {})[part] = tuple(tensor.shape)
                break
    return modules


def check_lora_fits(state_dict: dict, unet, where: str) -> None:
    """Refuse, in one line, LoRA weights whose modules or widths are not those of ``unet``."""
    modules = dict(unet.named_modules())
    entries = lora_modules(state_dict)
    if not entries:
        raise ModelLoadError(f"{where} holds no UNet LoRA weights (no keys ending in .lora_A.weight / .lora.down.weight)")
    for name, parts in sorted(entries.items()):
        module = modules.get(name)
        if module is None:
            raise ModelLoadError(f"the LoRA {where} was made for another UNet: this UNet has no module {name}")
        weight = getattr(module, "weight", None)
        if weight is None or weight.ndim < 2:
            raise ModelLoadError(f"the LoRA {where} was made for another UNet: {name} here is not a linear or convolution layer")
        down, up = parts.get("down"), parts.get("up")
        if down is None or up is None or down[1] != weight.shape[1] or up[0] != weight.shape[0]:
            raise ModelLoadError(
                f"the LoRA {where} was made for another UNet: {name} is {weight.shape[1]}->{weight.shape[0]} here, "
                f"the LoRA expects {down[1] if down else '?'}->{up[0] if up else '?'}"
            )


def apply_unet_source(unet, source: UNetSource, base: str | os.PathLike):
    """The UNet with ``source`` applied: its LoRA fused into the weights (then removed), or the trained UNet loaded."""
    if source.kind == "full":
        # A UNet trained in full may have another architecture than the base's (train-lora --init).
        return load_component(base, "unet", path=source.path)
    from safetensors.torch import load_file

    state_dict = load_file(str(source.path))
    check_lora_fits(state_dict, unet, str(source.path))
    try:
        unet.load_lora_adapter(state_dict, prefix="unet", adapter_name="synfer_lora")
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()
    except (ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"cannot fuse the LoRA {source.path}: {first_line(error)}") from None
    return unet



def lora_base_mismatch(source: UNetSource, unet_sha256: str) -> str | None:
    """A warning when a LoRA run recorded another base UNet than this one (the shapes fit, the weights differ)."""
    if source.kind != "lora":
        return None
    recorded = (source.record.get("inputs", {}).get("base") or {}).get("unet")
    if recorded is None or recorded == unet_sha256:
        return None
    return (f"warning: the LoRA {source.path} was trained on another base UNet (recorded {recorded[:12]}..., "
            f"this one {unet_sha256[:12]}...); it is fused anyway")
