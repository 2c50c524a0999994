"""What the downstream trainer does differently per task: the model, the targets, the loss, the metrics.

``classification`` (a FER classifier over the label set; cross-entropy; accuracy, balanced accuracy,
macro-F1) and ``aus`` (an AU detector over the 41 slots; a loss masked to the known slots: squared
error on intensities or binary cross-entropy on probabilities; per-AU F1, MAE, Pearson). The trainer
in :mod:`synfer.train.downstream_loop` runs either through the same steps: streams, accelerate,
EMA, checkpoints, exact resume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..aus import AU_NAMES, MIRRORED_SLOTS, NUM_AUS
from ..data.readers import LabelledDataset
from ..errors import ConfigError
from ..eval.metrics import ClassificationMetrics
from ..expressions import LabelSet
from .au_metrics import STATS, AUMetrics, au_statistics
from .au_metrics import better as au_better
from .data import IGNORE_INDEX, EvalStream, make_loader
from .downstream import DownstreamConfig


@torch.no_grad()
def evaluate(
    model, dataset: LabelledDataset, label_set: LabelSet, image_size: int, batch_size: int, workers: int, accelerator=None,
    seed: int = 0,
):
    """Metrics of ``model`` on ``dataset`` (summed over processes) and the unreadable images' messages."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    processes, index = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    stream = EvalStream(dataset, label_set, image_size, processes, index)
    classes = label_set.num_classes
    confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
    errors: list[str] = []
    was_training = model.training
    model.eval()
    for batch in make_loader(stream, batch_size, workers, seed, pin_memory=device.type == "cuda"):
        errors += [e for e in batch["error"] if e]
        valid = batch["valid"].to(device)
        if not valid.any():
            continue
        predictions = model(batch["image"].to(device).float().div_(255)).argmax(dim=1)
        targets = batch["target"].to(device)
        confusion += torch.bincount(targets[valid] * classes + predictions[valid], minlength=classes * classes)
    if accelerator is not None:
        confusion = accelerator.reduce(confusion, "sum")
    model.train(was_training)
    return ClassificationMetrics(tuple(label_set.names), confusion.view(classes, classes).cpu().numpy()), errors


@torch.no_grad()
def evaluate_aus(model, dataset: LabelledDataset, label_set: LabelSet, image_size: int, batch_size: int, workers: int,
                 accelerator=None, seed: int = 0, threshold: float | None = None):
    """:class:`AUMetrics` of an AU detector on ``dataset`` (an :class:`~synfer.train.au_targets.AUJoined`), summed over processes."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    processes, index = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    stream = EvalStream(dataset, label_set, image_size, processes, index)
    threshold = model.threshold if threshold is None else threshold
    trained = torch.from_numpy(np.asarray(model.known, bool)).to(device)
    stats = np.zeros((len(STATS), NUM_AUS))
    images = 0
    errors: list[str] = []
    was_training = model.training
    model.eval()
    for batch in make_loader(stream, batch_size, workers, seed, pin_memory=device.type == "cuda"):
        errors += [e for e in batch["error"] if e]
        valid = batch["valid"].to(device)
        if not valid.any():
            continue
        scores = model.to_scores(model(batch["image"].to(device).float().div_(255)).float())
        mask = batch["au_known"].to(device) & trained & valid[:, None]
        stats += au_statistics(scores.cpu().numpy(), batch["aus"].numpy(), mask.cpu().numpy(), threshold)
        images += int(valid.sum())
    if accelerator is not None:
        reduced = accelerator.reduce(torch.tensor(np.append(stats.ravel(), images), dtype=torch.float64, device=device), "sum")
        stats, images = reduced[:-1].view(stats.shape).cpu().numpy(), int(reduced[-1].item())
    model.train(was_training)
    return AUMetrics(stats, float(threshold), model.score_kind, images), errors


class ClassificationTask:
    """A FER classifier over the label set."""

    name = "classification"

    def prepare(self, config: DownstreamConfig, train: list[tuple[str, LabelledDataset]], evaluation: LabelledDataset):
        return train, evaluation

    def create_model(self, config: DownstreamConfig, label_set: LabelSet, train: list[tuple[str, LabelledDataset]]):
        from ..models.classifier import create_classifier

        return create_classifier(config.backbone, label_set, config.weights, input_size=config.image_size)

    def augmentation(self, size: int):
        from .augment import face_augmentation

        return face_augmentation(size)

    def batch(self, batch: dict, device, augment) -> tuple[torch.Tensor, dict]:
        images = batch["image"].to(device, non_blocking=True).float().div_(255)
        targets = batch["target"].to(device, non_blocking=True)
        if augment is not None:
            images = augment(images)
        return images, {"target": targets, "valid": batch["valid"]}

    def loss(self, outputs: torch.Tensor, targets: dict, config: DownstreamConfig, device) -> torch.Tensor:
        return F.cross_entropy(
            outputs.float(), targets["target"], ignore_index=IGNORE_INDEX, label_smoothing=config.label_smoothing, reduction="sum"
        ) / targets["valid"].sum().clamp(min=1).to(device)

    def evaluate(self, model, dataset, label_set, image_size, batch_size, workers, accelerator, seed, config):
        return evaluate(model, dataset, label_set, image_size, batch_size, workers, accelerator, seed)

    def better(self, metric: str, score, best) -> bool:
        return best is None or score > best

    def metrics_from_dict(self, data: dict) -> ClassificationMetrics:
        return ClassificationMetrics.from_dict(data)

    def figures(self, trainer, best, commit) -> None:
        from ..plots import plot_curves, plot_matrix

        state = trainer.state
        names = trainer.label_set.names
        title = f"{trainer.eval_set.name}, step {state.best['step']}"
        commit(lambda p: plot_matrix(best.confusion, names, names, p, title=title), "confusion.png")
        series = {"train loss": [tuple(p) for p in state.loss]}
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1")):
            series[f"eval {label}"] = [(e["step"], e[key]) for e in state.evals]
        commit(lambda p: plot_curves(series, p, title=f"{trainer.config.backbone} on {trainer.config.mode} data"), "curves.png")

    def dataset_info(self, dataset: LabelledDataset) -> dict:
        return {}

    def metrics_extra(self, trainer) -> dict:
        return {}


class AUTask:
    """An AU detector over the 41 slots, trained on AU targets joined by image id (masked to the known slots)."""

    name = "aus"

    def prepare(self, config: DownstreamConfig, train: list[tuple[str, LabelledDataset]], evaluation: LabelledDataset):
        from .au_targets import AUJoined, default_targets, read_targets

        primary = "real" if config.mode in ("real-only", "mixed") else "synthetic"

        def joined(role: str, dataset: LabelledDataset, path: str | None) -> AUJoined:
            targets = read_targets(path, dataset, config.au_id_column) if path else default_targets(dataset, role)
            return AUJoined(dataset, targets)

        train = [(role, joined(role, d, config.au_table if role == primary else None)) for role, d in train]
        evaluation = joined("eval", evaluation, config.eval_au_table)
        kinds = {d.kind for _, d in train} | {evaluation.kind}
        if len(kinds) > 1:
            described = "; ".join(f"{role}: {d.kind} from {d.source}" for role, d in [*train, ("eval", evaluation)])
            raise ConfigError(f"the AU targets mix intensities and probabilities ({described}); give tables of one kind")
        return train, evaluation

    def create_model(self, config: DownstreamConfig, label_set: LabelSet, train: list[tuple[str, LabelledDataset]]):
        from ..models.au_detector import create_au_detector

        known = np.logical_or.reduce([d.known_slots for _, d in train])
        self.kind = train[0][1].kind
        return create_au_detector(config.backbone, train[0][1].kind, known, config.weights, config.image_size, config.au_threshold)

    def augmentation(self, size: int):
        import kornia.augmentation as K

        # face_augmentation without its flip: a flip moves the subject's left AUs to the right (see batch()).
        return K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=(0.7, 1.0), ratio=(0.9, 1.1)),
            K.RandomAffine(degrees=10.0, translate=(0.05, 0.05), scale=(0.95, 1.05), p=0.5),
            K.ColorJitter(0.3, 0.3, 0.3, 0.03, p=0.8),
            K.RandomErasing(scale=(0.02, 0.15), p=0.25),
        )

    def batch(self, batch: dict, device, augment) -> tuple[torch.Tensor, dict]:
        images = batch["image"].to(device, non_blocking=True).float().div_(255)
        aus = batch["aus"].to(device, non_blocking=True).float()
        known = batch["au_known"].to(device, non_blocking=True)
        if augment is not None:
            flip = torch.rand(images.shape[0], device=device) < 0.5
            mirrored = torch.tensor(MIRRORED_SLOTS, device=device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            aus = torch.where(flip[:, None], aus[:, mirrored], aus)
            known = torch.where(flip[:, None], known[:, mirrored], known)
            images = augment(images)
        return images, {"aus": aus, "known": known}

    def loss(self, outputs: torch.Tensor, targets: dict, config: DownstreamConfig, device) -> torch.Tensor:
        """Mean over the known (image, slot) entries: squared error on intensities, binary cross-entropy on probabilities."""
        outputs = outputs.float()
        if self.kind == "probability":
            errors = F.binary_cross_entropy_with_logits(outputs, targets["aus"], reduction="none")
        else:
            errors = (outputs - targets["aus"]).square()
        weights = targets["known"].to(errors.dtype)  # unknown slots and unreadable images weigh nothing
        return (errors * weights).sum() / weights.sum().clamp(min=1)

    def evaluate(self, model, dataset, label_set, image_size, batch_size, workers, accelerator, seed, config):
        return evaluate_aus(model, dataset, label_set, image_size, batch_size, workers, accelerator, seed, config.au_threshold)

    def better(self, metric: str, score, best) -> bool:
        return au_better(metric, score, best)

    def metrics_from_dict(self, data: dict) -> AUMetrics:
        return AUMetrics.from_dict(data)

    def figures(self, trainer, best, commit) -> None:
        from ..plots import plot_curves

        state = trainer.state
        series = {"train loss": [tuple(p) for p in state.loss]}
        for key, label in (("f1", "mean F1"), ("mae", "mean MAE"), ("pearson", "mean Pearson")):
            series[f"eval {label}"] = [(e["step"], e[key]) for e in state.evals if e.get(key) is not None]
        title = f"AU detector ({trainer.config.backbone}) on {trainer.config.mode} data"
        commit(lambda p: plot_curves(series, p, title=title), "curves.png")

    def dataset_info(self, dataset: LabelledDataset) -> dict:
        return {"au_targets": {"source": str(dataset.source), "scores": dataset.kind,
                               "known_slots": [AU_NAMES[s] for s in np.flatnonzero(dataset.known_slots)]}}

    def metrics_extra(self, trainer) -> dict:
        model = trainer.unwrapped
        return {"task": "aus", "scores": model.score_kind, "threshold": model.threshold,
                "trained_slots": [AU_NAMES[s] for s in np.flatnonzero(model.known)]}


TASKS = {"classification": ClassificationTask, "aus": AUTask}


def make_task(config: DownstreamConfig):
    return TASKS[config.task]()
