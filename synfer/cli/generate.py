"""``synfer generate``: make a synthetic FER dataset in the DESIGN §4 format."""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import typer

from ..errors import ConfigError, DatasetError, LabelError, ModelLoadError
from . import app
from ._common import console, err_console, progress_bar, quiet_libraries

_MODEL_HELP = "Model: a synfer folder, a Stable Diffusion 1.5 folder (with --adapter), a hub id, or 'tiny'."


def _check_writable(out: Path) -> None:
    """Fail before any model loads if ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise DatasetError(f"cannot write to --out {out}: {error.strerror or error}") from None


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (or resume)."),
    n: int = typer.Option(None, "--n", help="Number of samples (overrides --scale).", min=1),
    scale: str = typer.Option(
        None, "--scale", help="1x..5x: that multiple of AffectNet's training size (287,651 for 8 classes, 283,901 for 7)."
    ),
    model: str = typer.Option(None, "--model", "-m", envvar="SYNFER_MODEL", help=_MODEL_HELP),
    adapter: Path = typer.Option(None, "--adapter", help="AU adapter folder (replaces the model's own)."),
    aus: str = typer.Option(None, "--aus", help="AUs for every sample, e.g. '6,12', 'AU6:2.5,AU12:4', 'L12,R14'."),
    label: str = typer.Option(None, "--label", help="Expression for every sample (name or AffectNet id)."),
    prompt: str = typer.Option(None, "--prompt", help="Coarse text added to every caption."),
    classes: int = typer.Option(8, "--classes", help="Label set: 8 (AffectNet-8) or 7 (no contempt)."),
    distribution: str = typer.Option(
        None, "--distribution", help="Labels: balanced (default), affectnet (its training frequencies) or a JSON file {label: weight}."
    ),
    au_source: str = typer.Option(
        None, "--au-source", help="AUs per sample: prototype (default; jittered), empirical (--au-table) or fixed (--aus)."
    ),
    au_table: Path = typer.Option(None, "--au-table", help="Parquet/CSV of real AU vectors with a 'label' column (empirical AUs)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    steps: int = typer.Option(50, "--steps", min=1, help="Denoising steps."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", help="Classifier-free guidance scale."),
    au_scale: float = typer.Option(1.0, "--au-scale", help="Weight of the AU attention (0 ignores the AUs)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed; sample i's seed derives from it and i."),
    height: int = typer.Option(None, "--height", help="Image height (default: the model's native size)."),
    width: int = typer.Option(None, "--width", help="Image width (default: the model's native size)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float16 on CUDA), float32, float16 or bfloat16."),
    image_format: str = typer.Option("png", "--format", help="png, jpg or webp."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Samples per shard."),
    negative_prompt: str = typer.Option(None, "--negative-prompt", help="Replaces the default negative prompt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset made with another config."),
    wait_timeout: float = typer.Option(
        900.0, "--wait-timeout", min=0, help="Seconds ranks > 0 wait for rank 0's manifest (multi-process runs)."
    ),
    guidance_model: Path = typer.Option(
        None, "--guidance-model", help="FER classifier folder: steer each sample toward its label (semantic guidance)."
    ),
    sg_step_size: float = typer.Option(0.1, "--sg-step-size", help="Guidance step size (lambda)."),
    sg_window: str = typer.Option("0.6:1.0", "--sg-window", help="Guided part of the schedule, START:END fractions."),
    sg_every: int = typer.Option(1, "--sg-every", help="Guide every k-th step of the window."),
    sg_normalize: str = typer.Option("global", "--sg-normalize", help="Gradient normalisation: global or per_token."),
    sg_decoder: str = typer.Option("vae", "--sg-decoder", help="Decoder for guidance: vae, or an AutoencoderTiny folder."),
    sg_reuse_prediction: bool = typer.Option(
        False, "--sg-reuse-prediction", help="Cheaper guided steps: updates act one step later (see README)."
    ),
    layout_dir: Path = typer.Option(None, "--layout-dir", help="Reference faces: each sample starts from one's DDIM inversion."),
    layout_strength: float = typer.Option(1.0, "--layout-strength", help="Fraction of the schedule inverted, in (0, 1]."),
    layout_iterations: int = typer.Option(0, "--layout-iterations", help="Fixed-point refinements per inversion step."),
) -> None:
    """Generate a synthetic facial-expression dataset (sharded, resumable, one process per GPU under accelerate)."""
    from ..models.loading import load_pipeline, resolve_model_name
    from ..pipelines.prompts import PromptBuilder
    from ..synth.plan import Planner
    from ..synth.runner import (
        DEFAULT_NEGATIVE_PROMPT,
        RenderConfig,
        build_manifest,
        finish_dataset,
        generate_dataset,
        prepare_output,
        rank_shards,
        wait_for_manifest,
    )
    from ..data.format import done_shards, shard_range

    # Cheap checks first: a typo should not cost a model load.
    plan_config = _plan_config(n, scale, seed, classes, label, aus, prompt, distribution, au_source, au_table)
    n = plan_config.n
    layout = None
    if layout_dir is not None:
        from ..pipelines.inversion import LayoutReferences

        layout = LayoutReferences(layout_dir, strength=layout_strength, iterations=layout_iterations)
        layout.check_steps(steps)
    guidance = None
    if guidance_model is not None:
        from ..labelers.classifier import load_classifier
        from ..pipelines.guidance import SemanticGuidance, parse_window

        guidance = SemanticGuidance(
            load_classifier(guidance_model),
            step_size=sg_step_size,
            window=parse_window(sg_window),
            every=sg_every,
            normalize=sg_normalize,
            decoder=sg_decoder,
            reuse_prediction=sg_reuse_prediction,
        )
    model_name = resolve_model_name(model)
    process = _process(device)
    rank, world_size = process.process_index, process.num_processes
    if rank == 0:  # other ranks stay out of --out until rank 0 has made it a dataset
        _check_writable(out)

    quiet_libraries()
    pipe = load_pipeline(model_name, adapter, device=process.device if world_size > 1 else device, dtype=dtype, seed=seed)
    if pipe.au_adapter is None:
        raise ModelLoadError(f"model {model_name!r} has no AU adapter; give one with --adapter DIR")
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if guidance is not None:
        guidance.classifier.to(pipe.device)
        if not isinstance(guidance.decoder, str):
            guidance.decoder.to(device=pipe.device, dtype=pipe.vae.dtype)
    if layout is not None:
        from ..pipelines.inversion import use_layout_scheduler

        replaced = use_layout_scheduler(pipe, steps)
        if replaced:
            err_console.print(f"--layout-dir: sampling with DDIMScheduler instead of {replaced} (inversion is DDIM)")
    render = RenderConfig(
        steps=steps,
        guidance_scale=guidance_scale,
        au_scale=au_scale,
        height=height or native,
        width=width or native,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt,
        image_format=image_format,
        shard_size=shard_size,
        guidance=guidance,
        layout=layout,
    )
    if render.height % pipe.vae_scale_factor or render.width % pipe.vae_scale_factor:
        raise ConfigError(f"--height and --width must be multiples of {pipe.vae_scale_factor}")
    planner = Planner(plan_config, PromptBuilder(pipe.tokenizer))
    if guidance is not None:
        # Every label the plan can give must be a class of the classifier: fail now, not at shard 37.
        try:
            guidance.classifier.target_indices(planner.possible_labels)
        except LabelError as error:
            raise LabelError(f"--guidance-model cannot judge every planned label: {error}") from None
    if planner.inferred_label is not None and process.is_main_process:
        expression, similarity = planner.inferred_label
        err_console.print(
            f"--aus {plan_config.aus} without --label: labelling every sample {expression.label!r} "
            f"(nearest prototype, similarity {similarity:.2f}); pass --label to choose"
        )

    from ..models.fingerprint import pipeline_fingerprint

    model_info = {"name": model_name, "adapter": str(adapter) if adapter else None, "components": pipeline_fingerprint(pipe)}
    if guidance is not None:
        model_info["guidance_model"] = str(guidance_model)
        model_info["guidance_decoder"] = sg_decoder
    if layout is not None:
        model_info["layout_dir"] = str(layout_dir)
    manifest = build_manifest(planner, render, model_info)
    if rank == 0:  # the only writer of the manifest; the other ranks wait for it on the shared filesystem
        prepare_output(out, manifest, overwrite=overwrite)
    else:
        wait_for_manifest(out, manifest, overwrite=overwrite, timeout=wait_timeout)

    mine = rank_shards(n, render.shard_size, rank, world_size)
    finished = done_shards(out)
    total = sum(len(shard_range(s, n, render.shard_size)) for s in mine)
    already = sum(len(shard_range(s, n, render.shard_size)) for s in mine if s in finished)
    who = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    start = time.perf_counter()
    # One bar per machine: the local main process shows its own shards' progress.
    bar = progress_bar(f"{who}generating", total=total, completed=already) if process.is_local_main_process else nullcontext(None)
    with bar as advance:
        result = generate_dataset(
            pipe, planner, render, out, batch_size=batch_size, rank=rank, world_size=world_size, on_progress=advance
        )
    elapsed = time.perf_counter() - start
    rate = result.made / elapsed if elapsed > 0 else 0.0
    complete = finish_dataset(out)
    console.print(
        f"{who}{out}: {total} samples in {len(mine)} shards; made {result.made} now ({rate:.2f} img/s), "
        f"{len(result.skipped_shards)} shards were already done"
        + ("; dataset complete, card written" if complete else "")
    )
    if world_size > 1:
        process.destroy_process_group()


def _plan_config(n, scale, seed, classes, label, aus, prompt, distribution, au_source, au_table):
    """The plan from the command-line options, checked before anything slow happens."""
    from ..aus import AUVector
    from ..expressions import parse_expression
    from ..synth.au_sources import file_sha256
    from ..synth.plan import PlanConfig, read_label_weights, scaled_size

    if n is None and scale is None:
        raise ConfigError("give the number of samples with --n N or --scale 1x..5x")
    if n is None:
        n = scaled_size(scale, classes)
    if label is not None and distribution is not None:
        raise ConfigError("--label fixes every sample's label; it cannot be combined with --distribution")
    if aus is not None and distribution is not None:
        raise ConfigError("--aus without --label labels every sample by the nearest prototype; it cannot be combined with --distribution")
    weights = None
    if distribution is not None and distribution not in ("balanced", "affectnet"):
        if not distribution.lower().endswith(".json"):
            raise ConfigError(f"unknown --distribution {distribution!r} (accepted: balanced, affectnet, or a .json file of weights)")
        weights, distribution = read_label_weights(distribution), "custom"
    if au_table is not None and au_source not in (None, "empirical"):
        raise ConfigError(f"--au-table goes with --au-source empirical, not {au_source}")
    if au_source == "empirical" and au_table is None:
        raise ConfigError("--au-source empirical needs --au-table FILE (parquet or CSV of AU vectors with a 'label' column)")
    if au_source == "fixed" and aus is None:
        raise ConfigError("--au-source fixed needs --aus, e.g. --aus 6,12")
    if aus is not None and au_source not in (None, "fixed"):
        raise ConfigError(f"--aus fixes every sample's AUs; it cannot be combined with --au-source {au_source}")
    return PlanConfig(
        n=n,
        base_seed=seed,
        classes=classes,
        label=int(parse_expression(label)) if label is not None else None,
        aus=AUVector.parse(aus).format() if aus is not None else None,
        prompt=prompt,
        distribution=distribution or "balanced",
        weights=weights,
        au_source="empirical" if au_table is not None else au_source,
        au_table=str(Path(au_table).resolve()) if au_table is not None else None,
        au_table_sha256=file_sha256(au_table) if au_table is not None else None,
    )


def _process(device: str):
    """This process's place in an ``accelerate launch`` / ``torchrun`` job (rank 0 of 1 when run plainly)."""
    import os

    from accelerate import PartialState

    from ..models.loading import resolve_device

    # On a CPU, accelerate only forms a multi-process group (gloo) when told the processes use the CPU.
    process = PartialState(cpu=resolve_device(device).type == "cpu")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and process.num_processes != launched:
        raise ConfigError(
            f"launched as {launched} processes but accelerate sees {process.num_processes}; "
            "give --device cpu when the machine has no GPU"
        )
    return process
