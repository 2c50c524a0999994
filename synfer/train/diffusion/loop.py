"""The one diffusion training loop, on accelerate; train-vae, train-lora and train-adapter each hand it a task.

A stage builds a :class:`StageParts` (the task module, its training examples, a validation callback
and what to save) and runs :class:`DiffusionTrainer`. The loop owns everything else:

* AdamW over the trainable parameters, kept in a ``list`` so that gradient clipping sees them at
  every step (a one-shot iterator, as some scripts pass, is empty after the optimizer read it, and
  clipping then silently does nothing); constant or cosine learning rate with linear warm-up;
* accelerate's mixed precision with float32 trainable weights, gradient accumulation, DDP under
  ``accelerate launch`` (each process its slice of every batch, see :mod:`.data`);
* an EMA of the trainable weights (``diffusers.training_utils.EMAModel``), used for validation and
  for the saved weights;
* ``metrics.jsonl`` and accelerate's trackers, the progress bar, validation every K steps;
* checkpoints ``checkpoints/checkpoint-N/`` (accelerate's state with the trainable weights only, the
  EMA, the loop's state), a limit on how many are kept, and ``--resume``, which refuses a checkpoint
  that lacks any trainable weight instead of silently continuing from fresh ones.

Every random draw of step ``s`` comes from a generator seeded by (seed, s, micro-batch, process),
and its examples are a function of (seed, s) (:class:`~.data.BatchPlan`), so a resumed run ends on
the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...data.run_folder import restore_swapped
from ...errors import DatasetError
from ...progress import Reporter, SilentReporter
from .. import make_accelerator
from ..checkpoints import CHECKPOINTS_DIR, STATE_NAME, load_ema, write_checkpoint
from .config import TrainOptions
from .data import BatchPlan, Collate, TrainingExamples, batch_loader

CHECKPOINTS = CHECKPOINTS_DIR
CHECKPOINT_PREFIX = "checkpoint-"  # diffusers' training scripts' names, unlike the downstream trainer's step-N
TRAINABLE_NAME = "trainable.safetensors"
METRICS_NAME = "metrics.jsonl"
VALIDATION_DIR = "validation"
LOGS_DIR = "logs"
STEP_STREAM = 3


def resolve_precision(option: str, cpu: bool) -> str:
    """``auto``: bf16 on a GPU that has it, else fp16 on a GPU, else no mixed precision."""
    if option != "auto":
        return option
    if not cpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def frozen_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype frozen weights are kept in: half precision on a GPU under mixed precision, float32 otherwise."""
    if device.type == "cuda" and mixed_precision in ("fp16", "bf16"):
        return torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.float32


def place(module, device, dtype=None):
    """``module`` on ``device``, cast to ``dtype`` only when it differs (diffusers warns about every cast, needed or not)."""
    current = next(module.parameters()).dtype
    return module.to(device) if dtype is None or dtype == current else module.to(device, dtype=dtype)


def step_generator(seed: int, step: int, micro: int, process: int, device: torch.device) -> torch.Generator:
    value = int(np.random.SeedSequence([seed, STEP_STREAM, step, micro, process]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(value)


def make_training_accelerator(options: TrainOptions, run_dir: Path | None, mixed_precision: str):
    """The run's Accelerator: mixed precision, accumulation, and the tracker of ``--report-to`` (its logs under RUN/logs)."""
    kwargs = dict(mixed_precision=mixed_precision, gradient_accumulation_steps=options.gradient_accumulation_steps, cpu=options.cpu)
    if options.report_to != "none" and run_dir is not None:
        kwargs.update(log_with=[options.report_to], project_dir=str(run_dir / LOGS_DIR))
    return make_accelerator(**kwargs)


@dataclass
class StageParts:
    """What a stage hands the loop.

    Args:
        name: the command ("train-lora"), for the progress bar and trackers.
        task: ``task(batch, generator) -> (loss, logs)``; its parameters with ``requires_grad`` are trained.
        examples, collate: the training examples and how they are batched.
        validate: ``validate(trainer, step) -> metrics`` on the main process, with the evaluated weights in place.
        tracker_config: flat settings for the trackers.
    """

    name: str
    task: nn.Module
    examples: TrainingExamples
    collate: Collate
    validate: Callable[[DiffusionTrainer, int], dict | None] | None = None
    tracker_config: dict = field(default_factory=dict)


@dataclass
class LoopState:
    """What a checkpoint holds besides accelerate's state."""

    step: int = 0
    images: int = 0
    seconds: float = 0.0
    last_loss: float | None = None
    loss_window: list = field(default_factory=list)  # step losses since the last metrics row
    validated: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> LoopState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step or validation, appended by the main process."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop what a run logged after the checkpoint it resumes from (and any torn last line)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(line)
        from ...data.format import atomic_write_bytes

        atomic_write_bytes(self.path, ("\n".join(kept) + "\n").encode() if kept else b"")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a folder counts once its loop state is written, i.e. once renamed into place)."""
    folder = Path(run_dir) / CHECKPOINTS
    done = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()
            and (p / STATE_NAME).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class DiffusionTrainer:
    """One training run of a stage: the accelerate objects and the loop around them."""

    caches = None  # the latent and text caches a stage builder filled, if any

    def __init__(self, options: TrainOptions, parts: StageParts, accelerator, run_dir: Path | None,
                 reporter: Reporter | None = None):
        self.options = options
        self.parts = parts
        self.accelerator = accelerator
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.reporter = reporter or SilentReporter()
        self.state = LoopState()
        self.metrics = MetricsLog(self.run_dir / METRICS_NAME, enabled=self.main) if self.run_dir is not None else MetricsLog(Path(), False)
        self._setup()

    # -- set-up -------------------------------------------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def _setup(self) -> None:
        from diffusers.optimization import get_scheduler

        options, accelerator = self.options, self.accelerator
        task = self.parts.task.to(accelerator.device)
        # A list: the optimizer and every clipping call see the same parameters, at every step.
        self.named_trainable: list[tuple[str, nn.Parameter]] = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
        if not self.named_trainable:
            raise DatasetError(f"{self.parts.name}: nothing to train (no parameter requires a gradient)")
        for _, parameter in self.named_trainable:
            if parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()  # fp16 trainable weights cannot be unscaled; they train in float32
        self.trainable = [p for _, p in self.named_trainable]
        self.plan = BatchPlan(len(self.parts.examples), options.batch_size, accelerator.num_processes, accelerator.process_index,
                              options.gradient_accumulation_steps, options.seed)
        self.plan.check()
        self.total_steps = options.max_train_steps or options.num_train_epochs * self.plan.steps_per_epoch
        optimizer = torch.optim.AdamW(self.trainable, lr=options.learning_rate, betas=(options.adam_beta1, options.adam_beta2),
                                      weight_decay=options.adam_weight_decay, eps=options.adam_epsilon)
        name = "constant_with_warmup" if options.lr_scheduler == "constant" else options.lr_scheduler
        # A prepared scheduler steps once per process for every optimizer step, hence the scaling.
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=options.lr_warmup_steps * accelerator.num_processes,
                                  num_training_steps=self.total_steps * accelerator.num_processes)
        self.task, self.optimizer, self.lr_scheduler = accelerator.prepare(task, optimizer, scheduler)
        self.ema = None
        if options.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.trainable, decay=options.ema_decay)
            self.ema.to(accelerator.device)
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)
        if options.report_to != "none" and self.run_dir is not None:
            config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.parts.tracker_config.items()}
            accelerator.init_trackers(f"synfer-{self.parts.name}", config=config)

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.task)

    # -- checkpoints --------------------------------------------------------------------------------
    def _save_hook(self, models, weights, output_dir) -> None:
        # Only the trainable weights go into a checkpoint: the frozen UNet is the base's, and would cost gigabytes each time.
        if self.main:
            from safetensors.torch import save_file

            save_file({n: p.detach().to("cpu").clone() for n, p in self.named_trainable}, str(Path(output_dir) / TRAINABLE_NAME))
        weights.clear()

    def _load_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        path = Path(input_dir) / TRAINABLE_NAME
        if not path.is_file():
            raise DatasetError(f"checkpoint {input_dir} holds no {TRAINABLE_NAME}; it was not written by this stage")
        state = load_file(str(path))
        names = [n for n, _ in self.named_trainable]
        missing = [n for n in names if n not in state]
        unexpected = sorted(set(state) - set(names))
        if missing or unexpected:
            raise DatasetError(
                f"checkpoint {input_dir} does not hold this run's trainable weights ({len(missing)} missing, e.g. "
                f"{(missing or ['-'])[0]}; {len(unexpected)} unexpected, e.g. {(unexpected or ['-'])[0]})"
            )
        with torch.no_grad():
            for name, parameter in self.named_trainable:
                value = state[name]
                if tuple(value.shape) != tuple(parameter.shape):
                    raise DatasetError(
                        f"checkpoint {input_dir}: {name} has shape {tuple(value.shape)}, the run has {tuple(parameter.shape)}"
                    )
                parameter.copy_(value.to(device=parameter.device, dtype=parameter.dtype))
        models.clear()

    def save_checkpoint(self) -> Path:
        final = self.run_dir / CHECKPOINTS / f"{CHECKPOINT_PREFIX}{self.state.step}"
        write_checkpoint(self.accelerator, final, self.state.to_dict(), self.ema, main=self.main)
        if self.main:
            for old in checkpoints(self.run_dir)[: -self.options.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Continue from the latest checkpoint; False when there is none (the run starts at step 0)."""
        if self.run_dir is None or not self.options.resume:
            return False
        if self.main:
            restore_swapped(self.run_dir, self.run_dir / CHECKPOINTS)
        self.accelerator.wait_for_everyone()
        found = checkpoints(self.run_dir)
        if not found:
            if self.main:
                self.reporter.log(f"no checkpoint in {self.run_dir / CHECKPOINTS} yet: starting from step 0")
                self.metrics.truncate_after(0)
            return False
        latest = found[-1]
        self.accelerator.load_state(str(latest))
        self.state = LoopState.from_dict(json.loads((latest / STATE_NAME).read_text()))
        if self.ema is not None:
            load_ema(self.ema, latest, self.accelerator.device)
        if self.main:
            self.metrics.truncate_after(self.state.step)
            self.reporter.log(f"resumed from {latest} (step {self.state.step} of {self.total_steps})")
        return True

    # -- evaluated weights ---------------------------------------------------------------------------
    def with_eval_weights(self, action):
        """Run ``action()`` with the weights that are validated and saved: the EMA ones when kept."""
        if self.ema is None:
            return action()
        self.ema.store(self.trainable)
        self.ema.copy_to(self.trainable)
        try:
            return action()
        finally:
            self.ema.restore(self.trainable)

    def validate(self, step: int) -> None:
        if self.parts.validate is None or self.run_dir is None:
            return
        self.state.validated.append(step)  # on every process: each decides alike whether the last step still needs one
        if self.main:
            task = self.unwrapped
            was_training = task.training
            task.eval()
            try:
                with torch.no_grad(), self.accelerator.autocast():
                    metrics = self.with_eval_weights(lambda: self.parts.validate(self, step)) or {}
            finally:
                task.train(was_training)
            if metrics:
                self.metrics.append({"step": step, **metrics})
                self.accelerator.log(metrics, step=step)
        self.accelerator.wait_for_everyone()

    # -- the loop ----------------------------------------------------------------------------------
    def train_step(self, batch: dict, micro: int = 0) -> tuple[torch.Tensor, dict]:
        """One micro-batch: forward, backward, and at the end of an accumulation the clipped optimizer step.

        Returns the (detached) loss and the task's logs plus ``grad_norm`` (the norm before clipping)
        on steps that updated the weights. This is the step the benchmarks time.
        """
        accelerator, options = self.accelerator, self.options
        generator = step_generator(options.seed, self.state.step, micro, accelerator.process_index, accelerator.device)
        torch.manual_seed(int(generator.initial_seed()) % (2**63))  # module-internal randomness (LoRA dropout) follows the step too
        with accelerator.accumulate(self.task):
            loss, logs = self.task(batch, generator)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                limit = options.max_grad_norm if options.max_grad_norm > 0 else math.inf
                logs["grad_norm"] = accelerator.clip_grad_norm_(self.trainable, limit)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), logs

    def train(self) -> LoopState:
        options, accelerator, state, plan = self.options, self.accelerator, self.state, self.plan
        accumulation = options.gradient_accumulation_steps
        images_per_step = options.batch_size * accumulation * accelerator.num_processes
        show_metrics = getattr(self.reporter, "show_metrics", None) if self.main else None
        self.task.train()
        started, done_before = time.perf_counter(), state.seconds
        with self.reporter.progress(self.parts.name, total=self.total_steps, completed=state.step, unit="step", show=self.main) as advance:
            while state.step < self.total_steps:
                epoch, done = divmod(state.step, plan.steps_per_epoch)
                batches = plan.micro_batches(epoch, start=done * accumulation)
                loader = batch_loader(self.parts.examples, batches, self.parts.collate, options.workers,
                                      pin_memory=accelerator.device.type == "cuda")
                step_losses: list[torch.Tensor] = []
                for micro, batch in enumerate(loader):
                    batch = {k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                    loss, logs = self.train_step(batch, micro % accumulation)
                    step_losses.append(loss)
                    if not accelerator.sync_gradients:
                        continue
                    state.step += 1
                    state.images += images_per_step
                    if self.ema is not None:
                        self.ema.step(self.trainable)
                    step_loss = float(torch.stack(step_losses).mean())
                    step_losses = []
                    state.last_loss = step_loss
                    state.loss_window.append(step_loss)
                    state.seconds = done_before + time.perf_counter() - started
                    if state.step % options.log_every == 0 or state.step == self.total_steps:
                        self._log(state.loss_window, logs, epoch)
                        state.loss_window = []
                    advance(1)
                    if show_metrics is not None:
                        show_metrics(loss=step_loss, lr=self.lr_scheduler.get_last_lr()[0])
                    if options.validation_every and state.step % options.validation_every == 0:
                        self.validate(state.step)
                    if self.run_dir is not None and state.step % options.checkpoint_every == 0 and state.step < self.total_steps:
                        self.save_checkpoint()
                    if state.step >= self.total_steps:
                        break
        if self.total_steps not in state.validated:
            self.validate(self.total_steps)
        return state

    def _log(self, window: list[float], logs: dict, epoch: int) -> None:
        accelerator = self.accelerator
        loss = torch.tensor(sum(window) / max(1, len(window)), device=accelerator.device)
        loss = float(accelerator.reduce(loss, "mean")) if accelerator.num_processes > 1 else float(loss)
        row = {"step": self.state.step, "epoch": epoch, "loss": loss, "lr": float(self.lr_scheduler.get_last_lr()[0]),
               "images": self.state.images, "seconds": round(self.state.seconds, 3)}
        if "grad_norm" in logs:
            row["grad_norm"] = float(logs["grad_norm"])
        for name, value in logs.items():
            if name != "grad_norm" and torch.is_tensor(value) and value.numel() == 1:
                row[name] = float(value)
        self.metrics.append(row)
        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=self.state.step)

    def close(self) -> None:
        if self.options.report_to != "none" and self.run_dir is not None:
            self.accelerator.end_training()
        self.accelerator.free_memory()
