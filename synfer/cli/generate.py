"""``synfer generate``: make a synthetic FER dataset in the DESIGN §4 format."""

from __future__ import annotations

import tempfile
import time
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
    n: int = typer.Option(None, "--n", help="Number of samples.", min=1),
    model: str = typer.Option(None, "--model", "-m", envvar="SYNFER_MODEL", help=_MODEL_HELP),
    adapter: Path = typer.Option(None, "--adapter", help="AU adapter folder (replaces the model's own)."),
    aus: str = typer.Option(None, "--aus", help="AUs for every sample, e.g. '6,12', 'AU6:2.5,AU12:4', 'L12,R14'."),
    label: str = typer.Option(None, "--label", help="Expression for every sample (name or AffectNet id)."),
    prompt: str = typer.Option(None, "--prompt", help="Coarse text added to every caption."),
    classes: int = typer.Option(8, "--classes", help="Label set: 8 (AffectNet-8) or 7 (no contempt)."),
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
    """Generate a synthetic facial-expression dataset (sharded, resumable)."""
    from ..aus import AUVector
    from ..expressions import parse_expression
    from ..models.loading import load_pipeline, resolve_model_name
    from ..pipelines.prompts import PromptBuilder
    from ..synth.plan import PlanConfig, Planner
    from ..synth.runner import (
        DEFAULT_NEGATIVE_PROMPT,
        RenderConfig,
        build_manifest,
        generate_dataset,
        prepare_output,
        rank_shards,
    )
    from ..data.format import done_shards, shard_range

    # Cheap checks first: a typo should not cost a model load.
    if n is None:
        raise ConfigError("give the number of samples with --n N")
    fixed_aus = AUVector.parse(aus).format() if aus is not None else None
    fixed_label = int(parse_expression(label)) if label is not None else None
    plan_config = PlanConfig(n=n, base_seed=seed, classes=classes, label=fixed_label, aus=fixed_aus, prompt=prompt)
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
    _check_writable(out)
    model_name = resolve_model_name(model)

    quiet_libraries()
    pipe = load_pipeline(model_name, adapter, device=device, dtype=dtype, seed=seed)
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
        planned = [planner.fixed_label] if planner.fixed_label is not None else planner.label_set.expressions
        try:
            guidance.classifier.target_indices(planned)
        except LabelError as error:
            raise LabelError(f"--guidance-model cannot judge every planned label: {error}") from None
    if planner.inferred_label is not None:
        expression, similarity = planner.inferred_label
        err_console.print(
            f"--aus {fixed_aus} without --label: labelling every sample {expression.label!r} "
            f"(nearest prototype, similarity {similarity:.2f}); pass --label to choose"
        )

    from ..models.fingerprint import pipeline_fingerprint

    model_info = {"name": model_name, "adapter": str(adapter) if adapter else None, "components": pipeline_fingerprint(pipe)}
    if guidance is not None:
        model_info["guidance_model"] = str(guidance_model)
        model_info["guidance_decoder"] = sg_decoder
    if layout is not None:
        model_info["layout_dir"] = str(layout_dir)
    prepare_output(out, build_manifest(planner, render, model_info), overwrite=overwrite)

    mine = rank_shards(n, render.shard_size)
    finished = done_shards(out)
    already = sum(len(shard_range(s, n, render.shard_size)) for s in mine if s in finished)
    start = time.perf_counter()
    with progress_bar("generating", total=n, completed=already) as advance:
        result = generate_dataset(pipe, planner, render, out, batch_size=batch_size, on_progress=advance)
    elapsed = time.perf_counter() - start
    rate = result.made / elapsed if elapsed > 0 else 0.0
    console.print(
        f"{out}: {n} samples in {len(mine)} shards; made {result.made} now ({rate:.2f} img/s), "
        f"{len(result.skipped_shards)} shards were already done"
    )
