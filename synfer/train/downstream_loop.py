"""The downstream training loop: one model trained on accelerate, evaluated on real faces.

:func:`synfer.train.downstream.train_downstream` checks the options and the run folder and then runs
:class:`DownstreamTrainer` (kept here so that reading the options loads no torch). What depends on
the task (a FER classifier, or an AU detector with ``--task aus``) is in :mod:`synfer.train.tasks`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .. import __version__
from ..data.format import write_json
from ..data.readers import LabelledDataset
from ..data.run_folder import replace_dir
from ..errors import ConfigError, DatasetError
from ..eval.metrics import ClassificationMetrics
from ..expressions import get_label_set
from . import make_accelerator
from .checkpoints import (
    CHECKPOINTS_DIR,
    STATE_NAME,
    latest_checkpoint,
    load_ema,
    write_checkpoint,
)
from .data import (
    Source,
    StreamShape,
    TrainStream,
    make_loader,
)
from .downstream import (
    CONFIG_NAME,
    CURVE_POINTS,
    METRICS_NAME,
    DownstreamConfig,
    DownstreamOutput,
    TrainHooks,
    open_datasets,
)
from .tasks import evaluate, make_task

__all__ = ["DownstreamTrainer", "TrainerState", "evaluate", "training_sources"]


@dataclass
class TrainerState:
    """What a checkpoint holds besides accelerate's state: progress, curves, the best evaluation."""

    step: int = 0
    images: int = 0
    unreadable: int = 0
    unreadable_examples: list = field(default_factory=list)
    loss: list = field(default_factory=list)  # [step, mean loss over the steps since the previous point]
    loss_window: list = field(default_factory=lambda: [0.0, 0])  # running sum and count
    evals: list = field(default_factory=list)  # {"step": ..., accuracy, balanced_accuracy, macro_f1}
    best: dict | None = None  # {"step": ..., **metrics.to_dict()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainerState:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def training_sources(config: DownstreamConfig, train: list[tuple[str, LabelledDataset]]) -> list[Source]:
    """How many samples each training dataset gives per epoch (mixed: real once, synthetic by ratio)."""
    if config.mode != "mixed":
        return [Source(dataset, len(dataset)) for _, dataset in train]
    real = dict(train)["real"]
    synthetic_count = max(1, round(len(real) * config.synthetic_ratio / (1 - config.synthetic_ratio)))
    return [Source(real, len(real)), Source(dict(train)["synthetic"], synthetic_count)]


# -- training -----------------------------------------------------------------------------------------

def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Biases and normalisation weights are not decayed (the usual AdamW recipe for vision backbones).
    decay, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else plain).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class DownstreamTrainer:
    """One run: the objects accelerate prepared and the loop around them."""

    def __init__(self, config: DownstreamConfig, hooks: TrainHooks):
        self.config = config
        self.hooks = hooks
        self.run = Path(config.out)

    # The steps of ``train_downstream``, in order.
    def setup(self) -> None:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler

        config = self.config
        self.task = make_task(config)
        self.label_set = get_label_set(config.classes)
        self.train_sets, self.eval_set = self.task.prepare(config, *open_datasets(config))
        self.accelerator = make_accelerator(
            mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum, cpu=config.cpu
        )
        accelerator = self.accelerator
        set_seed(config.seed)
        model = self.task.create_model(config, self.label_set, self.train_sets)
        # Each process augments differently from here on; the model started identical everywhere.
        set_seed(config.seed, device_specific=True)
        self.image_size = model.input_size
        self.stream = TrainStream(
            training_sources(config, self.train_sets),
            self.label_set,
            self.image_size,
            config.seed,
            StreamShape(config.batch_size, accelerator.num_processes, accelerator.process_index, config.workers, config.grad_accum),
            balanced=config.balanced,
            shuffle_buffer=config.shuffle_buffer,
        )
        self.steps_per_epoch = self.stream.batches_per_process // config.grad_accum
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.log_every = max(1, self.total_steps // CURVE_POINTS)
        optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
        # Prepared schedulers step once per process for every optimizer step, hence the scaling.
        scheduler = get_scheduler(
            "cosine",
            optimizer,
            num_warmup_steps=round(config.warmup_ratio * self.total_steps) * accelerator.num_processes,
            num_training_steps=self.total_steps * accelerator.num_processes,
        )
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.ema = None
        if config.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.unwrapped.parameters(), decay=config.ema_decay)
            self.ema.to(accelerator.device)
        self.augment = self.task.augmentation(self.image_size).to(accelerator.device) if config.augment else None
        self.state = TrainerState()

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def describe(self) -> dict:
        datasets = {role: self._dataset_info(d) for role, d in self.train_sets}
        datasets["eval"] = self._dataset_info(self.eval_set)
        return {
            "config": self.config.to_dict(),
            "synfer_version": __version__,
            "label_set": self.label_set.name,
            "image_size": self.image_size,
            "steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "images_per_epoch": self.stream.images_per_epoch * self.accelerator.num_processes,
            "num_processes": self.accelerator.num_processes,
            "datasets": datasets,
        }

    def _dataset_info(self, dataset: LabelledDataset) -> dict:
        return {
            "name": dataset.name,
            "root": str(dataset.root),
            "images": len(dataset),
            "classes": dataset.class_counts(),
            "left_out": dataset.stats.to_dict(),
            **self.task.dataset_info(dataset),
        }

    def resume(self) -> None:
        if not self.config.resume:
            return
        saved = json.loads((self.run / CONFIG_NAME).read_text())
        if saved.get("num_processes") != self.accelerator.num_processes:
            raise ConfigError(
                f"{self.run} was trained by {saved.get('num_processes')} process(es), this launch has "
                f"{self.accelerator.num_processes}; an exact resume needs the same number"
            )
        now = self.describe()["datasets"]
        changed = [role for role, info in saved.get("datasets", {}).items() if now.get(role, {}).get("images") != info.get("images")]
        if changed:
            role = changed[0]
            raise ConfigError(
                f"the {role} dataset changed since {self.run} started ({saved['datasets'][role].get('images')} images then, "
                f"{now.get(role, {}).get('images')} now); an exact resume needs the same data"
            )
        checkpoint = latest_checkpoint(self.run)
        if checkpoint is None:
            if self.main:
                self.hooks.log(f"no checkpoint in {self.run / CHECKPOINTS_DIR}: starting from step 0")
            return
        self.accelerator.load_state(str(checkpoint))
        self.state = TrainerState.from_dict(json.loads((checkpoint / STATE_NAME).read_text()))
        if self.ema is not None:
            load_ema(self.ema, checkpoint, self.accelerator.device)
        if self.main:
            self.hooks.log(f"resumed from {checkpoint} (step {self.state.step} of {self.total_steps})")

    def save_checkpoint(self) -> None:
        folder = self.run / CHECKPOINTS_DIR
        write_checkpoint(self.accelerator, folder / f"step-{self.state.step:08d}", self.state.to_dict(), self.ema, main=self.main)
        if self.main:
            done = sorted((p for p in folder.glob("step-*") if not p.name.endswith(".tmp")), key=lambda p: int(p.name.split("-")[1]))
            for old in done[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _with_eval_weights(self, action):
        """Run ``action`` with the weights that are evaluated and saved: the EMA ones when kept."""
        if self.ema is None:
            return action()
        parameters = list(self.unwrapped.parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            return action()
        finally:
            self.ema.restore(parameters)

    def save_model(self, name: str, metrics: ClassificationMetrics) -> None:
        if not self.main:
            return
        final = self.run / name
        tmp = final.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        extra = {"trained": {"step": self.state.step, "mode": self.config.mode, "ema": self.ema is not None,
                             "eval": self.eval_set.name, **metrics.summary()}}
        self._with_eval_weights(lambda: self.unwrapped.save_pretrained(tmp, extra=extra))
        replace_dir(tmp, final)

    def evaluate(self) -> ClassificationMetrics:
        config = self.config

        def run():
            # The bare module: a DDP forward may broadcast buffers, a collective that would hang
            # when processes evaluate different numbers of batches.
            return self.task.evaluate(
                self.unwrapped, self.eval_set, self.label_set, self.image_size, config.eval_batch_size or config.batch_size,
                config.workers, self.accelerator, config.seed, config,
            )

        metrics, errors = self._with_eval_weights(run)
        self._note_unreadable(errors)
        self.last = metrics
        self.state.evals.append({"step": self.state.step, **metrics.summary()})
        score = metrics.summary()[config.best_metric]
        if self.state.best is None or self.task.better(config.best_metric, score, self.state.best[config.best_metric]):
            self.state.best = {"step": self.state.step, **metrics.to_dict()}
            self.save_model("best", metrics)
        if self.main:
            self.hooks.evaluated(self.state.step, metrics)
        return metrics

    def _note_unreadable(self, errors: list[str]) -> None:
        if errors and self.config.strict:
            raise DatasetError(f"unreadable image: {errors[0]}")
        self.state.unreadable += len(errors)
        room = 3 - len(self.state.unreadable_examples)
        self.state.unreadable_examples += errors[: max(0, room)]

    def _record_loss(self, loss: float) -> None:
        window = self.state.loss_window
        window[0] += loss
        window[1] += 1
        if self.state.step % self.log_every == 0 or self.state.step == self.total_steps:
            self.state.loss.append([self.state.step, window[0] / window[1]])
            self.state.loss_window = [0.0, 0]

    def train(self) -> None:
        config, accelerator, state = self.config, self.accelerator, self.state
        loader = make_loader(self.stream, config.batch_size, config.workers, config.seed, pin_memory=accelerator.device.type == "cuda")
        batch_images = config.batch_size * config.grad_accum
        self.model.train()
        while state.step < self.total_steps:
            epoch, done = divmod(state.step, self.steps_per_epoch)
            epoch_end = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
            self.stream.set_epoch(epoch, skip_batches=done * config.grad_accum)
            if self.main:
                self.hooks.epoch_started(epoch, self.epochs, (epoch_end - epoch * self.steps_per_epoch) * batch_images, done * batch_images)
            step_loss = 0.0
            for batch in loader:
                self._note_unreadable([e for e in batch["error"] if e])
                images, targets = self.task.batch(batch, accelerator.device, self.augment)
                with accelerator.accumulate(self.model):
                    loss = self.task.loss(self.model(images), targets, config, accelerator.device)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.grad_clip > 0:
                        accelerator.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_loss += loss.item() / config.grad_accum
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                state.images += batch_images * accelerator.num_processes
                if self.ema is not None:
                    self.ema.step(self.unwrapped.parameters())
                self._record_loss(step_loss)
                if self.main:
                    self.hooks.step_finished(state.step, batch_images, step_loss)
                step_loss = 0.0
                # Evaluate before checkpointing, so that a run resumed from this step has the evaluation.
                if config.eval_every is not None:
                    due = state.step % config.eval_every == 0 or state.step == self.total_steps
                else:
                    due = state.step == epoch_end
                if due:
                    self.evaluate()
                if state.step % config.checkpoint_every == 0 and state.step < self.total_steps:
                    self.save_checkpoint()
                if state.step >= epoch_end:
                    break
            if self.main:
                self.hooks.epoch_finished(epoch)

    def finish(self) -> DownstreamOutput:
        state = self.state
        last = self.last  # the loop always ends with an evaluation at the last step
        best = self.task.metrics_from_dict(state.best)
        if self.main:
            self.save_model("last", last)
            self.task.figures(self, best, self._commit_figure)
            write_json(self.run / METRICS_NAME, {
                "best_metric": self.config.best_metric,
                "best": state.best,
                "last": {"step": state.step, **last.to_dict()},
                "history": state.evals,
                "eval": self._dataset_info(self.eval_set),
                "train": {"mode": self.config.mode, "steps": state.step, "images": state.images,
                          "unreadable": state.unreadable, "unreadable_examples": state.unreadable_examples},
                **self.task.metrics_extra(self),
            })
        self.accelerator.wait_for_everyone()
        return DownstreamOutput(self.run, state.step, int(state.best["step"]), best, last, state.unreadable, self.task.name)

    def close(self) -> None:
        """Let go of what accelerate holds for this run (prepared models, optimizer, dataloaders)."""
        if getattr(self, "accelerator", None) is not None:
            self.accelerator.free_memory()

    def _commit_figure(self, draw, name: str) -> None:
        tmp = self.run / f".{name}"  # keeps the .png suffix, which names the format
        draw(tmp)
        os.replace(tmp, self.run / name)
