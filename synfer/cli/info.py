"""``synfer info``: versions, devices, what a model is made of, and (``--cost``) what an image costs."""

from __future__ import annotations

import platform
from importlib import metadata

import typer
from rich.table import Table

from ..errors import ConfigError
from . import app
from ._common import console, err_console, quiet_libraries

_PACKAGES = (
    "synfer",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "safetensors",
    "webdataset",
    "pyarrow",
    "xformers",
)
_SD15 = "sd15"  # synfer.pipelines.cost.SD15_NAME, repeated so that plain `synfer info` imports no torch
_DEFAULT_TFLOPS = 300.0  # synfer.pipelines.cost.DEFAULT_TFLOPS


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@app.command()
def info(
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Also describe this model: a path, a hub id, 'tiny', or 'sd15' (the SD1.5 architecture, no weights).",
    ),
    adapter: str = typer.Option(None, "--adapter", help="AU adapter folder to load with --model."),
    cost: bool = typer.Option(
        False, "--cost", help="Count the FLOPs of generating one image, and the GPU-hours for a dataset."
    ),
    height: int = typer.Option(None, "--height", help="[--cost] Image height (default: the model's native size)."),
    width: int = typer.Option(None, "--width", help="[--cost] Image width (default: the model's native size)."),
    steps: int = typer.Option(None, "--steps", help="[--cost] Denoising steps (default 50)."),
    guidance_scale: float = typer.Option(
        None, "--guidance-scale", help="[--cost] Classifier-free guidance scale (default 7.5; <= 1: no CFG)."
    ),
    guidance_classifier: str = typer.Option(
        None,
        "--guidance-classifier",
        help="[--cost] Semantic guidance with this classifier architecture: a backbone name (resnet18, ...) or a classifier folder.",
    ),
    sg_window: str = typer.Option(
        None, "--sg-window", help="[--cost] Guided part of the schedule, START:END fractions (default 0.6:1.0)."
    ),
    sg_every: int = typer.Option(None, "--sg-every", help="[--cost] Guide every k-th step of the window (default 1)."),
    sg_decoder: str = typer.Option(
        None,
        "--sg-decoder",
        help="[--cost] Decoder for guidance: vae (default), tiny (TAESD), or an AutoencoderTiny folder.",
    ),
    sg_reuse_prediction: bool = typer.Option(
        False, "--sg-reuse-prediction", help="[--cost] Guided steps reuse their guidance passes."
    ),
    layout_strength: float = typer.Option(
        None, "--layout-strength", help="[--cost] Layout initialisation: fraction of the schedule inverted, in (0, 1]."
    ),
    layout_iterations: int = typer.Option(
        None, "--layout-iterations", help="[--cost] Fixed-point refinements per inversion step (default 0)."
    ),
    n: int = typer.Option(
        None, "--n", help="[--cost] GPU-hours for this many images (default: AffectNet 1x and 5x).", min=0
    ),
    scale: str = typer.Option(None, "--scale", help="[--cost] GPU-hours for 1x..5x AffectNet's training size."),
    classes: int = typer.Option(8, "--classes", help="[--cost] AffectNet label set for --scale: 8 or 7."),
    tflops: float = typer.Option(
        None,
        "--tflops",
        help=f"[--cost] Achieved (not peak) TFLOP/s per GPU for the GPU-hours (default {_DEFAULT_TFLOPS:g}, an assumption).",
    ),
) -> None:
    """Show versions, devices, a model's components with parameter counts, and with --cost the FLOPs per image."""
    cost_options = {
        "--height": height,
        "--width": width,
        "--steps": steps,
        "--guidance-scale": guidance_scale,
        "--guidance-classifier": guidance_classifier,
        "--sg-window": sg_window,
        "--sg-every": sg_every,
        "--sg-decoder": sg_decoder,
        "--sg-reuse-prediction": sg_reuse_prediction or None,
        "--layout-strength": layout_strength,
        "--layout-iterations": layout_iterations,
        "--n": n,
        "--scale": scale,
        "--tflops": tflops,
    }
    # Cheap checks first: a typo should not cost a model load.
    if not cost:
        given = [name for name, value in cost_options.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --cost")
    else:
        if model is None:
            raise ConfigError(
                "--cost needs --model: sd15 (the SD1.5 architecture, no weights), tiny, or a model folder"
            )
        sg_given = [
            name
            for name in ("--sg-window", "--sg-every", "--sg-decoder", "--sg-reuse-prediction")
            if cost_options[name] is not None
        ]
        if sg_given and guidance_classifier is None:
            raise ConfigError(
                f"{', '.join(sg_given)} set semantic guidance; give --guidance-classifier NAME (e.g. resnet18) too"
            )
        if layout_iterations is not None and layout_strength is None:
            raise ConfigError("--layout-iterations refines a layout inversion; give --layout-strength too")
        if n is not None and scale is not None:
            raise ConfigError("give at most one of --n and --scale")
        if tflops is not None and not tflops > 0:
            raise ConfigError(f"--tflops must be a number > 0 (achieved TFLOP/s per GPU), got {tflops}")
        from ..pipelines.steering import check_guidance, check_layout, parse_window

        check_guidance(0.0, parse_window(sg_window or "0.6:1.0"), sg_every if sg_every is not None else 1, "global")
        if layout_strength is not None:
            check_layout(layout_strength, layout_iterations or 0)

    if scale is not None:
        from ..synth.plan import scaled_size

        scaled_size(scale, classes)
    if model is not None:
        # A mistyped folder fails here, before the tables, not after them.
        from ..models.tiny import TINY_NAME
        from ..pipelines.loading import adapter_folder, model_source

        if model not in (_SD15, TINY_NAME):
            model_source(model)
        if adapter is not None:
            adapter_folder(adapter)

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
    quiet_libraries()
    if cost or model == _SD15:
        # The architecture alone (on the meta device, except the tiny model): no weights are read.
        from ..pipelines.cost import model_architecture

        pipe = model_architecture(model, adapter)
    else:
        from ..pipelines.loading import load_pipeline

        pipe = load_pipeline(model, adapter, device="cpu", dtype="float32")
    _print_components(pipe, model, torch)
    if cost:
        _print_cost(
            pipe,
            model,
            height=height,
            width=width,
            steps=steps if steps is not None else 50,
            guidance_scale=guidance_scale if guidance_scale is not None else 7.5,
            guidance_classifier=guidance_classifier,
            sg_window=sg_window or "0.6:1.0",
            sg_every=sg_every if sg_every is not None else 1,
            sg_decoder=sg_decoder or "vae",
            sg_reuse_prediction=sg_reuse_prediction,
            layout_strength=layout_strength,
            layout_iterations=layout_iterations or 0,
            n=n,
            scale=scale,
            classes=classes,
            tflops=tflops if tflops is not None else _DEFAULT_TFLOPS,
        )


def _print_components(pipe, model: str, torch) -> None:
    title = f"model {model}" + (
        " (architecture on the meta device: no weights)" if pipe.unet.device.type == "meta" else ""
    )
    components = Table(title=title)
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


def _print_cost(
    pipe,
    model: str,
    *,
    height,
    width,
    steps,
    guidance_scale,
    guidance_classifier,
    sg_window,
    sg_every,
    sg_decoder,
    sg_reuse_prediction,
    layout_strength,
    layout_iterations,
    n,
    scale,
    classes,
    tflops,
) -> None:
    from ..expressions import affectnet_train_size, get_label_set
    from ..pipelines.cost import CostConfig, gpu_hours, guidance_architecture, measure_cost
    from ..pipelines.inversion import LayoutInit, use_layout_scheduler
    from ..pipelines.steering import inverted_steps, parse_window

    label_set = get_label_set(classes)
    if scale is not None:
        from ..synth.plan import scaled_size

        sizes = [(f"{scale} AffectNet", scaled_size(scale, classes))]
    elif n is not None:
        sizes = [("", n)]
    else:
        base = affectnet_train_size(label_set)
        sizes = [("1x AffectNet", base), ("5x AffectNet", 5 * base)]

    layout = None
    if layout_strength is not None:
        layout = LayoutInit(strength=layout_strength, iterations=layout_iterations)
        replaced = use_layout_scheduler(pipe, steps, inverted_steps(steps, layout_strength))
        if replaced:
            err_console.print(
                f"--layout-strength: sampling with DDIMScheduler instead of {replaced}, whose noise levels no inversion retraces"
            )
    guidance = None
    if guidance_classifier is not None:
        guidance = guidance_architecture(
            pipe,
            guidance_classifier,
            window=parse_window(sg_window),
            every=sg_every,
            decoder=sg_decoder,
            reuse_prediction=sg_reuse_prediction,
            label_set=label_set.name,
        )
    config = CostConfig(
        height=height, width=width, steps=steps, guidance_scale=guidance_scale, guidance=guidance, layout=layout
    )
    import torch

    # On the CPU (the tiny model) the count runs thousands of small kernels, which a second thread only slows.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = measure_cost(pipe, config, model)
    finally:
        torch.set_num_threads(threads)

    cfg = f"CFG {guidance_scale:g}" if report.classifier_free_guidance else "no CFG"
    steering = [f"semantic guidance ({report.guidance['classifier']})" if guidance else "no semantic guidance"]
    if layout is not None:
        refinements = f"{layout.iterations} refinement{'' if layout.iterations == 1 else 's'}"
        steering.append(f"layout init (strength {layout.strength:g}, {refinements} per step)")
    table = Table(
        title=f"cost of one image: {model}, {report.height}x{report.width}, {steps} steps, {cfg}, {', '.join(steering)}"
    )
    for column in ("what", "FLOPs", "note"):
        table.add_column(column, justify="right" if column == "FLOPs" else "left")
    for row in report.rows():
        table.add_row(*row)
    for what, count in sizes:
        hours = gpu_hours(report, count, tflops)
        table.add_row(
            f"GPU-hours, {count:,} images",
            _hours(hours),
            f"{what + '; ' if what else ''}at {tflops:g} TFLOP/s achieved",
        )
    console.print(table)
    console.print(
        f"FLOPs as torch's FlopCounterMode counts them (matrix products and convolutions, attention in its math form), "
        f"measured along the pipeline's own calls at batch 1. GPU-hours assume {tflops:g} TFLOP/s sustained per GPU"
        + (
            " (the default: an assumption, not a measurement; set --tflops)."
            if tflops == _DEFAULT_TFLOPS
            else " (--tflops)."
        )
    )


def _hours(hours: float) -> str:
    """About three significant figures: 110 h, 22.1 h, and below an hour in seconds (37.1 s)."""
    if hours >= 100:
        return f"{hours:,.0f} h"
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 3600:,.3g} s"
