"""``synfer info``: versions, devices, and what a model is made of."""

from __future__ import annotations

import platform
from importlib import metadata

import typer
from rich.table import Table

from . import app
from ._common import console, quiet_libraries

_PACKAGES = ("synfer", "torch", "diffusers", "transformers", "accelerate", "safetensors", "webdataset", "pyarrow", "xformers")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@app.command()
def info(
    model: str = typer.Option(None, "--model", "-m", help="Also describe this model (path, hub id or 'tiny')."),
    adapter: str = typer.Option(None, "--adapter", help="AU adapter folder to load with --model."),
) -> None:
    """Show versions, devices, and a model's components with parameter counts."""
    import torch

    versions = Table(title="versions", show_header=False)
    versions.add_row("python", platform.python_version())
    for package in _PACKAGES:
        versions.add_row(package, _version(package))
    console.print(versions)

    devices = Table(title="devices", show_header=False)
    devices.add_row("cpu", f"{platform.machine()}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.add_row(f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        devices.add_row("cuda", "not available")
    console.print(devices)

    if model is None:
        return
    from ..models.loading import load_pipeline

    quiet_libraries()
    pipe = load_pipeline(model, adapter, device="cpu", dtype="float32")
    components = Table(title=f"model {model}")
    for column in ("component", "class", "parameters"):
        components.add_column(column, justify="right" if column == "parameters" else "left")
    total = 0
    for name, component in pipe.components.items():
        if component is None:
            components.add_row(name, "-", "-")
            continue
        count = sum(p.numel() for p in component.parameters()) if isinstance(component, torch.nn.Module) else None
        total += count or 0
        components.add_row(name, type(component).__name__, f"{count:,}" if count is not None else "-")
    components.add_row("total", "", f"{total:,}")
    console.print(components)
    if pipe.au_adapter is not None:
        config = pipe.au_adapter.config
        console.print(
            f"AU adapter: {len(config.layer_names)} cross-attention layers, {config.num_tokens} AU tokens "
            f"of width {config.cross_attention_dim}"
        )
