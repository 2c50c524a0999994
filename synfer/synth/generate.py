"""``generate()``: make (or resume, or grow) a synthetic FER dataset; what ``synfer generate`` runs.

```python
from synfer import GenerateConfig, generate

result = generate(GenerateConfig(out="runs/happy", model="/models/synfer", aus="6,12", label="happy", n=1000))
```

The config holds every option and its rules: defaults, checks and messages live on
:class:`GenerateConfig`, and every check that needs no model runs when it is built, so a typo costs
nothing. ``generate`` then loads the model, writes or checks the manifest (rank 0; other ranks wait
for it), and makes this process's unfinished shards. Under ``accelerate launch`` / ``torchrun`` each
process makes the shards ``s`` with ``s % world_size == rank``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.format import check_image_format
from ..errors import ConfigError, LabelError, ModelLoadError
from ..pipelines.schedulers import MODEL_SCHEDULER, SCHEDULERS
from ..pipelines.speed import MODEL_VAE_DTYPE, check_vae_dtype
from ..pipelines.steering import VAE_DECODER, check_guidance, check_layout, inverted_steps, parse_window
from ..progress import Reporter, SilentReporter
from ..prompts import DEFAULT_CAPTION_STYLE, default_negative_prompt
from .batching import parse_batch_size
from .plan import LABEL_DISTRIBUTIONS, PlanConfig, read_label_weights, read_prompt_file, scaled_size
from .runner import DEFAULT_WAIT_TIMEOUT, DEFAULT_WRITER_THREADS

MODEL_ENV = "SYNFER_MODEL"


@dataclass(frozen=True)
class GenerateConfig:
    """Everything ``synfer generate`` takes; see ``synfer generate --help`` for each option.

    ``n`` or ``scale`` gives the size (``n`` wins). ``model`` falls back to ``$SYNFER_MODEL``.
    ``height`` and ``width`` default to the model's native size. The ``sg_*`` options apply with
    ``guidance_model``, the ``layout_*`` ones with ``layout_dir``. ``batch_size`` is a number or
    ``"auto"``. The speed levers (docs/performance.md): ``compile``, ``channels_last`` and ``vae_dtype``
    may change images in their last bits, so they are off unless asked and recorded in the manifest;
    ``batch_size`` and ``writer_threads`` change no sample.
    """

    out: str
    n: int | None = None
    scale: str | None = None
    model: str | None = None
    adapter: str | None = None
    aus: str | None = None
    label: str | None = None
    prompt: str | None = None
    prompt_file: str | None = None
    classes: int = 8
    distribution: str | None = None
    au_source: str | None = None
    au_table: str | None = None
    batch_size: int | str = 8
    steps: int = 50
    guidance_scale: float = 7.5
    au_scale: float = 1.0
    seed: int = 0
    height: int | None = None
    width: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    image_format: str = "png"
    shard_size: int = 1000
    negative_prompt: str | None = None
    overwrite: bool = False
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    guidance_model: str | None = None
    sg_step_size: float = 0.1
    sg_window: str = "0.6:1.0"
    sg_every: int = 1
    sg_normalize: str = "global"
    sg_decoder: str = VAE_DECODER
    sg_reuse_prediction: bool = False
    layout_dir: str | None = None
    layout_strength: float = 1.0
    layout_iterations: int = 0
    scheduler: str = MODEL_SCHEDULER
    captions: str = DEFAULT_CAPTION_STYLE
    compile: bool = False
    channels_last: bool = False
    vae_dtype: str = MODEL_VAE_DTYPE
    writer_threads: int = DEFAULT_WRITER_THREADS
    plan: PlanConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))
        if self.writer_threads < 0:
            raise ConfigError(f"--writer-threads must be >= 0 (0 encodes images inline), got {self.writer_threads}")
        check_vae_dtype(self.vae_dtype)
        for name in ("steps", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.wait_timeout < 0:
            raise ConfigError(f"--wait-timeout must be >= 0, got {self.wait_timeout}")
        check_image_format(self.image_format)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise ConfigError(f"--{name} must be >= 8, got {value}")
        check_guidance(self.sg_step_size, parse_window(self.sg_window), self.sg_every, self.sg_normalize)
        check_layout(self.layout_strength, self.layout_iterations)
        SCHEDULERS.check(self.scheduler)
        if self.layout_dir is not None:
            inverted_steps(self.steps, self.layout_strength)
        object.__setattr__(self, "plan", self._plan_config())

    @property
    def model_name(self) -> str:
        """``model``, falling back to ``$SYNFER_MODEL``; an error when neither is set."""
        from ..pipelines.loading import NO_MODEL_MESSAGE

        name = self.model or os.environ.get(MODEL_ENV)
        if not name:
            raise ModelLoadError(NO_MODEL_MESSAGE)
        return name

    def _plan_config(self) -> PlanConfig:
        """The plan from the options, checked before anything slow happens."""
        from ..aus import AUVector
        from ..expressions import parse_expression
        from .au_sources import file_sha256

        if self.n is None and self.scale is None:
            raise ConfigError("give the number of samples with --n N or --scale Nx (N times AffectNet's training size)")
        # A mistyped --scale is an error even when --n overrides it, so a typo never passes silently.
        scaled = scaled_size(self.scale, self.classes) if self.scale is not None else None
        n = self.n if self.n is not None else scaled
        if self.label is not None and self.distribution is not None:
            raise ConfigError("--label fixes every sample's label; it cannot be combined with --distribution")
        if self.aus is not None and self.distribution is not None:
            raise ConfigError(
                "--aus without --label labels every sample by the nearest prototype; it cannot be combined with --distribution"
            )
        weights, distribution = None, self.distribution
        if distribution is not None and distribution not in LABEL_DISTRIBUTIONS:
            if not distribution.lower().endswith(".json"):
                named = ", ".join(name for name in LABEL_DISTRIBUTIONS if name != "custom")
                raise ConfigError(f"unknown --distribution {distribution!r} (accepted: {named}, or a .json file of weights)")
            weights, distribution = read_label_weights(distribution), "custom"
        au_source, au_table = self.au_source, self.au_table
        if au_table is not None and au_source not in (None, "empirical"):
            raise ConfigError(f"--au-table goes with --au-source empirical, not {au_source}")
        if au_source == "empirical" and au_table is None:
            raise ConfigError("--au-source empirical needs --au-table FILE (parquet or CSV of AU vectors with a 'label' column)")
        if au_source == "fixed" and self.aus is None:
            raise ConfigError("--au-source fixed needs --aus, e.g. --aus 6,12")
        if self.aus is not None and au_source not in (None, "fixed"):
            raise ConfigError(f"--aus fixes every sample's AUs; it cannot be combined with --au-source {au_source}")
        return PlanConfig(
            n=n,
            base_seed=self.seed,
            classes=self.classes,
            label=int(parse_expression(self.label)) if self.label is not None else None,
            aus=AUVector.parse(self.aus).format() if self.aus is not None else None,
            prompt=self.prompt,
            prompt_file=str(Path(self.prompt_file).resolve()) if self.prompt_file is not None else None,
            # Read here, so that a missing or empty file fails before any model loads.
            prompt_file_sha256=read_prompt_file(self.prompt_file)[1] if self.prompt_file is not None else None,
            distribution=distribution or "balanced",
            weights=weights,
            au_source="empirical" if au_table is not None else au_source,
            au_table=str(Path(au_table).resolve()) if au_table is not None else None,
            au_table_sha256=file_sha256(au_table) if au_table is not None else None,
            captions=self.captions,
        )


@dataclass
class GenerateResult:
    """What :func:`generate` did in this process.

    Args:
        out: the dataset folder.
        n: samples in the dataset.
        rank, world_size: this process's place in the job.
        samples: samples in this process's shards.
        made: samples made now; ``seconds``: the time spent making them (model loading excluded).
        made_shards, skipped_shards: this process's shards made now and found finished.
        grown_from: the dataset's previous n when this run grew it, else None.
        complete: every shard is finished (the card is written).
    """

    out: Path
    n: int
    rank: int = 0
    world_size: int = 1
    samples: int = 0
    made: int = 0
    seconds: float = 0.0
    made_shards: list[int] = field(default_factory=list)
    skipped_shards: list[int] = field(default_factory=list)
    grown_from: int | None = None
    complete: bool = False

    @property
    def rate(self) -> float:
        return self.made / self.seconds if self.seconds > 0 else 0.0


def _process(device: str):
    """This process's place in an ``accelerate launch`` / ``torchrun`` job (rank 0 of 1 when run plainly)."""
    from accelerate import PartialState

    from ..devices import resolve_device

    # On a CPU, accelerate only forms a multi-process group (gloo) when told the processes use the CPU.
    process = PartialState(cpu=resolve_device(device).type == "cpu")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and process.num_processes != launched:
        raise ConfigError(
            f"launched as {launched} processes but accelerate sees {process.num_processes}; "
            "give --device cpu when the machine has no GPU"
        )
    return process


def _steering(config: GenerateConfig):
    """The semantic guidance and layout references the config asks for (classifier and decoder loaded)."""
    guidance = layout = None
    if config.layout_dir is not None:
        from ..pipelines.inversion import LayoutReferences

        layout = LayoutReferences(config.layout_dir, strength=config.layout_strength, iterations=config.layout_iterations)
    if config.guidance_model is not None:
        from ..models.classifier import load_classifier
        from ..pipelines.guidance import SemanticGuidance

        guidance = SemanticGuidance(
            load_classifier(config.guidance_model),
            step_size=config.sg_step_size,
            window=parse_window(config.sg_window),
            every=config.sg_every,
            normalize=config.sg_normalize,
            decoder=config.sg_decoder,
            reuse_prediction=config.sg_reuse_prediction,
        )
    return guidance, layout


def _apply_levers(pipe, render, reporter: Reporter | None) -> None:
    """The speed levers ``render`` asks for, after the model's fingerprint was taken (as loaded, in --dtype)."""
    from ..pipelines.speed import compile_unet, set_vae_dtype, use_channels_last

    set_vae_dtype(pipe, render.vae_dtype)
    if render.channels_last:
        use_channels_last(pipe)
    if render.compile:
        compile_unet(pipe)
        if reporter is not None:
            reporter.log("--compile: the UNet compiles on its first batch (and on each new batch shape), which takes a while")


def generate(config: GenerateConfig, reporter: Reporter | None = None) -> GenerateResult:
    """Make this process's unfinished shards of the dataset ``config`` describes; see the module docstring."""
    from ..data.format import done_shards, shard_range
    from ..models.fingerprint import pipeline_fingerprint
    from ..pipelines.loading import load_pipeline
    from ..prompts import PromptBuilder
    from .plan import Planner
    from .runner import (
        RenderConfig,
        build_manifest,
        dataset_folder,
        finish_dataset,
        generate_dataset,
        open_dataset,
        rank_shards,
        wait_for_manifest,
    )

    reporter = reporter or SilentReporter()
    model_name = config.model_name
    guidance, layout = _steering(config)
    process = _process(config.device)
    rank, world_size = process.process_index, process.num_processes
    out = Path(config.out)
    if rank == 0:  # other ranks stay out of --out until rank 0 has made it a dataset
        dataset_folder(out).check_writable()
    if config.scale is not None and config.n is None and process.is_main_process:
        reporter.log(f"--scale {config.scale}: {config.plan.n:,} images")

    pipe = load_pipeline(
        model_name, config.adapter, device=process.device if world_size > 1 else config.device, dtype=config.dtype, seed=config.seed
    )
    if pipe.au_adapter is None:
        raise ModelLoadError(f"model {model_name!r} has no AU adapter; give one with --adapter DIR")
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = config.height or native, config.width or native
    if height % pipe.vae_scale_factor or width % pipe.vae_scale_factor:
        raise ConfigError(f"--height and --width must be multiples of {pipe.vae_scale_factor} for this model, got {height}x{width}")
    if guidance is not None:
        guidance.classifier.to(pipe.device)
        if not isinstance(guidance.decoder, str):
            guidance.decoder.to(device=pipe.device, dtype=pipe.vae.dtype)
    from ..pipelines.schedulers import use_scheduler

    use_scheduler(pipe, config.scheduler)
    if layout is not None:
        from ..pipelines.inversion import layout_mismatch, use_layout_scheduler

        inverted = inverted_steps(config.steps, config.layout_strength)
        reason = None if config.scheduler == MODEL_SCHEDULER else layout_mismatch(pipe.scheduler, config.steps, inverted)
        if reason:
            raise ConfigError(f"--layout-dir with --scheduler {config.scheduler}: {reason}; or use --scheduler ddim")
        replaced = use_layout_scheduler(pipe, config.steps, inverted)
        if replaced and process.is_main_process:
            reporter.log(f"--layout-dir: sampling with DDIMScheduler instead of {replaced}, whose noise levels no inversion retraces")
    render = RenderConfig(
        steps=config.steps,
        guidance_scale=config.guidance_scale,
        au_scale=config.au_scale,
        height=height,
        width=width,
        negative_prompt=default_negative_prompt(config.captions) if config.negative_prompt is None else config.negative_prompt,
        image_format=config.image_format,
        shard_size=config.shard_size,
        scheduler=config.scheduler,
        compile=config.compile,
        channels_last=config.channels_last,
        vae_dtype=config.vae_dtype,
        guidance=guidance,
        layout=layout,
    )
    planner = Planner(config.plan, PromptBuilder(pipe.tokenizer, style=config.plan.captions))
    if guidance is not None:
        # Every label the plan can give must be a class of the classifier: fail now, not at shard 37.
        try:
            guidance.classifier.target_indices(planner.possible_labels)
        except LabelError as error:
            raise LabelError(f"--guidance-model cannot judge every planned label: {error}") from None
    if planner.inferred_label is not None and process.is_main_process:
        expression, similarity = planner.inferred_label
        reporter.log(
            f"--aus {config.plan.aus} without --label: labelling every sample {expression.label!r} "
            f"(nearest prototype, similarity {similarity:.2f}); pass --label to choose"
        )

    model_info = {"name": model_name, "adapter": config.adapter, "components": pipeline_fingerprint(pipe)}
    if guidance is not None:
        model_info["guidance_model"] = str(config.guidance_model)
        model_info["guidance_decoder"] = config.sg_decoder
    if layout is not None:
        model_info["layout_dir"] = str(config.layout_dir)
    manifest = build_manifest(planner, render, model_info)
    _apply_levers(pipe, render, reporter if process.is_main_process else None)
    result = GenerateResult(out, config.plan.n, rank, world_size)
    if rank == 0:  # the only writer of the manifest; the other ranks wait for it on the shared filesystem
        result.grown_from = open_dataset(out, manifest, planner, overwrite=config.overwrite)
        if result.grown_from is not None:
            reporter.log(f"{out}: growing from {result.grown_from:,} to {config.plan.n:,} samples; finished shards are kept")
    else:
        wait_for_manifest(out, manifest, overwrite=config.overwrite, timeout=config.wait_timeout)

    mine = rank_shards(result.n, render.shard_size, rank, world_size)
    finished = done_shards(out)
    result.samples = sum(len(shard_range(s, result.n, render.shard_size)) for s in mine)
    already = sum(len(shard_range(s, result.n, render.shard_size)) for s in mine if s in finished)
    who = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    # One bar per machine: the local main process shows its own shards' progress.
    show = process.is_local_main_process
    start = time.perf_counter()
    with reporter.progress(f"{who}generating", total=result.samples, completed=already, show=show) as advance:
        made = generate_dataset(
            pipe, planner, render, out, batch_size=config.batch_size, rank=rank, world_size=world_size, on_progress=advance,
            writer_threads=config.writer_threads, log=reporter.log if process.is_main_process else None,
        )
    result.seconds = time.perf_counter() - start
    result.made, result.made_shards, result.skipped_shards = made.made, made.made_shards, made.skipped_shards
    result.complete = finish_dataset(out)
    if world_size > 1:
        process.destroy_process_group()
    return result

