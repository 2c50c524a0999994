"""The evaluate stage, step by step (``synfer.eval.evaluate.evaluate`` is its entry point).

Cheap checks run first (the output folder, the dataset, every model path), then the judge is loaded and
checked for independence before any image is read, then the real reference is checked for layout
references, and only then are images decoded, once per side, through the feature cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.run_folder import OLD_SUFFIX, ResumeRules, RunFolder, replace_dir
from ..errors import ConfigError, DatasetError
from ..expressions import Expression, LabelSet
from ..progress import Reporter
from .evaluate import (
    EVALUATION_FORMAT,
    EVALUATION_VERSION,
    METRICS_NAME,
    NOT_COMPARED,
    RECORD_NAME,
    EvaluateConfig,
    EvaluateResult,
    Figure,
    record_of,
)
from .feature_backbones import BackboneOptions, load_feature_backbone, parse_feature_spec
from .feature_cache import FeatureCache
from .independence import au_detector_status, dependence, recorded_models
from .judges import JUDGES, load_judge
from .model_files import local_model_path
from .sources import GeneratedImages, RealImages

RULES = ResumeRules(compare=("format", "version", "config"), ignore=frozenset(f"config.{name}" for name in NOT_COMPARED))
_HINT = "use the same options to refresh it, another --out, or --overwrite to replace it"
MIN_ROWS = 2  # FD needs two samples per side; the k-NN metrics need k + 1


def _recover(out: Path) -> None:
    """Undo what an interrupted run left: a half-built folder beside ``out``, or an old one swapped out but not back."""
    tmp = RunFolder.temporary(out)
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    old = out.with_name(out.name + OLD_SUFFIX)
    if old.exists():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, out)


def _rows(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The valid rows; the array itself when all are (no copy of a feature set that may be gigabytes)."""
    return values if valid.all() else values[valid]


def _names(labels: np.ndarray) -> np.ndarray:
    return np.asarray([Expression(int(v)).label for v in labels.tolist()], dtype=object).astype(str)


def _per_class_n(labels: np.ndarray, label_set: LabelSet) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(Expression))
    return {e.label: int(counts[int(e)]) for e in label_set.expressions}


def _check_paths(config: EvaluateConfig, load_au_detector) -> None:
    for spec in config.features:
        local_model_path(parse_feature_spec(spec)[1], "feature backbone")
    if config.judge:
        local_model_path(JUDGES.parse(config.judge)[1], "judge")
    if config.au_detector:
        local_model_path(config.au_detector.partition(":")[2], "AU detector")


def _dependence_message(judge, matches) -> str:
    where = "; ".join(str(match) for match in matches)
    return (f"the judge {judge.kind}:{judge.source} has the same weights (sha256 {judge.fingerprint[:12]}...) as {where}; "
            "it would grade images it steered or labels it chose. Use an independent judge, or --allow-dependent-judge "
            "to measure anyway (its figures are then marked 'dependent')")


def _thumbnails(source, valid: np.ndarray, label_set: LabelSet, per_class: int) -> dict[int, list]:
    """Up to ``per_class`` decoded images per class (AffectNet id -> images), the first valid rows of each."""
    from ..data.readers import UnreadableImage

    wanted: dict[int, int] = {}
    for expression in label_set.expressions:
        rows = np.flatnonzero(valid & (source.labels == int(expression)))[:per_class]
        wanted.update({int(row): int(expression) for row in rows})
    images: dict[int, list] = {int(e): [] for e in label_set.expressions}
    for chunk in source.chunks():
        if not any(int(row) in wanted for row in chunk.rows):
            continue
        for row, raw in source.items(chunk):
            if row in wanted:
                with contextlib.suppress(UnreadableImage):  # a thumbnail less; the image was counted as unreadable
                    images[wanted[row]].append(source.decode(raw))
    return images


def _figures(metrics: dict, backbones: list[str]) -> dict[str, dict]:
    figures: dict[str, Figure] = {}
    for name in backbones:
        d = metrics["features"][name]["distribution"]
        if d.get("fd"):
            figures[f"fd/{name}"] = Figure(f"fd/{name}", d["fd"]["value"], d["fd"]["ci"], better="lower")
        if d.get("fd_infinity"):
            figures[f"fd_infinity/{name}"] = Figure(f"fd_infinity/{name}", d["fd_infinity"]["value"], better="lower")
        if d.get("kid"):
            figures[f"kid/{name}"] = Figure(f"kid/{name}", d["kid"]["mean"], std=d["kid"]["std"], better="lower")
        if d.get("prdc"):
            for key in ("precision", "recall", "density", "coverage"):
                figures[f"{key}/{name}"] = Figure(f"{key}/{name}", d["prdc"][key], better="higher")
        if d.get("per_class_kid") and d["per_class_kid"]["mean_over_classes"] is not None:
            figures[f"per_class_kid/{name}"] = Figure(f"per_class_kid/{name}", d["per_class_kid"]["mean_over_classes"],
                                                      better="lower")
        if d.get("diversity_fake"):
            figures[f"diversity/{name}"] = Figure(f"diversity/{name}", d["diversity_fake"]["mean_over_classes"])
            figures[f"diversity_real/{name}"] = Figure(f"diversity_real/{name}", d["diversity_real"]["mean_over_classes"])
    judge = metrics.get("judge")
    if judge:
        flags = tuple(judge["flags"])
        for key in ("accuracy", "balanced_accuracy"):
            figures[f"judge/{key}"] = Figure(f"judge/{key}", judge["generated"][key], judge["generated"][f"{key}_ci"], better="higher",
                                             flags=flags)
            if judge.get("real"):
                figures[f"judge/real_{key}"] = Figure(f"judge/real_{key}", judge["real"][key], judge["real"][f"{key}_ci"])
    au = metrics.get("au")
    if au:
        report, flags = au["report"], tuple(au["flags"])
        figures["au/macro_f1"] = Figure("au/macro_f1", report["macro_f1"], report["macro_f1_ci"], better="higher", flags=flags)
        pearsons = [e["pearson"] for e in report["per_au"].values() if e["pearson"] is not None and e["requested"]]
        if pearsons:
            figures["au/mean_pearson"] = Figure("au/mean_pearson", float(np.mean(pearsons)), better="higher", flags=flags)
        maes = [e["mae"] for e in report["per_au"].values() if e["mae"] is not None and e["requested"]]
        if maes:
            figures["au/mean_mae"] = Figure("au/mean_mae", float(np.mean(maes)), better="lower", flags=flags)
    return {name: figure.to_dict() for name, figure in figures.items()}


def run_evaluation(config: EvaluateConfig, reporter: Reporter, load_au_detector: Callable | None) -> EvaluateResult:
    from ..devices import available_cpus, resolve_device
    from .distribution import distribution_metrics
    from .extract import extract
    from .reference import check_layout_references

    start = time.perf_counter()
    out = Path(config.out)
    _recover(out)
    folder = RunFolder(out, RECORD_NAME, "dataset evaluation")
    record = record_of(config)
    status = folder.open(record, RULES, overwrite=config.overwrite, write=False, hint=_HINT)
    folder.check_writable()
    if status.state == "same":
        reporter.log(f"{out} holds this evaluation already; computing it again (features come from the cache)")

    generated = GeneratedImages(config.dataset, config.labels, config.max_generated)
    label_set = generated.label_set
    manifest = generated.dataset.manifest
    if load_au_detector is None:
        from ..labelers.au_detectors import load_au_detector
    _check_paths(config, load_au_detector)
    device = resolve_device(config.device)

    judge, matches = None, []
    if config.judge:
        judge = load_judge(config.judge, device, config.judge_options())
        judge.check_covers(label_set)
        matches = dependence(judge.fingerprint, recorded_models(generated.root, manifest))
        if matches and not config.allow_dependent_judge:
            raise ConfigError(_dependence_message(judge, matches))
        if matches:
            reporter.log(f"--allow-dependent-judge: the judge is {matches[0]}; its figures are marked 'dependent'")
    detector = au_status = None
    if config.au_detector:
        from .au_faithfulness import DetectorExtractor

        detector = DetectorExtractor(load_au_detector(config.au_detector, device), config.resize)
        au_status = au_detector_status(detector.detector.fingerprint, manifest)
        if au_status.status == "self-consistency":
            reporter.log(f"the AU detector {config.au_detector} annotated the AUs this model learnt: its figures measure "
                         "self-consistency, not faithfulness")
    backbones = []
    for spec in config.features:  # --feature-size is DINOv2's; the other kinds have one input size
        size = config.feature_size if parse_feature_spec(spec)[0] == "dinov2" else None
        backbones.append(load_feature_backbone(spec, device, BackboneOptions(size, config.resize, config.dtype)))

    real = RealImages(config.real, config.real_split, label_set, layout=config.real_layout, crop=config.real_crop,
                      numbering=config.numbering, max_n=config.max_real, seed=config.seed)
    layout = check_layout_references(generated, real, layout_dir=config.layout_dir, drop=config.drop_layout_references,
                                     reporter=reporter)
    if layout.dropped:
        reporter.log(f"--drop-layout-references: left {layout.dropped} layout references out of the real reference "
                     f"({len(real)} images remain)")

    cache = FeatureCache(config.cache)
    workers = config.workers or min(8, available_cpus())
    generated_models = {b.name: b for b in backbones}
    real_models = dict(generated_models)
    if judge is not None:
        generated_models["judge"] = real_models["judge"] = judge
    if detector is not None:
        generated_models["au"] = detector
    on_generated = extract(generated, generated_models, cache, batch_size=config.batch_size, workers=workers, reporter=reporter)
    on_real = extract(real, real_models, cache, batch_size=config.batch_size, workers=workers, reporter=reporter) if real_models \
        else None
    gv = on_generated.valid
    rv = on_real.valid if on_real is not None else np.zeros(len(real), dtype=bool)
    for side, count, examples in (("generated", on_generated.unreadable, on_generated.unreadable_examples),
                                  ("real", on_real.unreadable if on_real else 0, on_real.unreadable_examples if on_real else [])):
        if count:
            reporter.log(f"{count} {side} images could not be decoded and are left out (first: {'; '.join(examples)})")
    generated_labels, real_labels = generated.labels[gv], real.labels[rv]

    metrics: dict = {
        "format": EVALUATION_FORMAT, "schema_version": EVALUATION_VERSION, "synfer_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "settings": config.to_dict(),
        "label_set": label_set.name,
        "generated": {**generated.describe(), "n_valid": int(gv.sum()), "unreadable": on_generated.unreadable,
                      "per_class_n": _per_class_n(generated_labels, label_set)},
        "real": {**real.describe(), "n_valid": int(rv.sum()), "unreadable": on_real.unreadable if on_real else 0,
                 "per_class_n": _per_class_n(real_labels, label_set), "layout_references": layout.to_dict()},
        "features": {}, "flags": {"dependent": [], "self_consistency": []},
    }
    if not real_models:
        metrics["real"]["note"] = "no feature backbone or judge: the real reference was only checked, not read"

    distribution_options = {"bootstrap_resamples": config.bootstrap_resamples, "kid_subsets": config.kid_subsets,
                            "kid_subset_size": config.kid_subset_size, "kid_min_per_class": config.kid_min_per_class}
    for backbone in backbones:
        fake, true = _rows(on_generated.values[backbone.name], gv), _rows(on_real.values[backbone.name], rv)
        if min(len(fake), len(true)) < MIN_ROWS:
            raise DatasetError(f"distribution metrics need at least {MIN_ROWS} images per side; {len(true)} real and "
                               f"{len(fake)} generated images were readable")
        wanted = ("fd", "fd_infinity", "kid", "prdc", "per_class_kid", "diversity")
        notes = []
        if min(len(fake), len(true)) <= 5:  # the k-NN radii need k + 1 = 6 samples per side
            wanted = tuple(m for m in wanted if m != "prdc")
            notes.append("prdc: needs at least 6 images per side")
        reporter.log(f"distribution metrics in {backbone.name} features ({len(true)} real, {len(fake)} generated)")
        report = distribution_metrics(true, fake, _names(real_labels), _names(generated_labels), seed=config.seed,
                                      metrics=wanted, **distribution_options)
        entry = {**backbone.describe(), "distribution": report.to_dict()}
        entry["distribution"]["notes"] += notes
        metrics["features"][backbone.name] = entry

    if judge is not None:
        from .accuracy import judge_figures

        figures = {"generated": judge_figures("generated", generated_labels, on_generated.values["judge"][gv], judge.classes,
                                              label_set, seed=config.seed, resamples=config.interval_resamples).to_dict(),
                   "real": judge_figures("real", real_labels, on_real.values["judge"][rv], judge.classes, label_set,
                                         seed=config.seed, resamples=config.interval_resamples).to_dict()}
        flags = ["dependent"] if matches else []
        metrics["judge"] = {**judge.describe(), **figures, "flags": flags, "dependent": bool(matches),
                            "dependent_on": [m.to_dict() for m in matches]}
        if matches:
            metrics["flags"]["dependent"] += ["judge/accuracy", "judge/balanced_accuracy"]
    if detector is not None:
        from .au_faithfulness import au_faithfulness

        threshold, threshold_source = (config.au_threshold, "--au-threshold") if config.au_threshold is not None \
            else detector.threshold
        report = au_faithfulness(generated.aus[gv], generated.au_known[gv], on_generated.values["au"][gv], detector.known,
                                 scores=detector.detector.scores, threshold=threshold, seed=config.seed,
                                 resamples=config.interval_resamples)
        flags = ["self-consistency"] if au_status.status == "self-consistency" else []
        metrics["au"] = {"detector": detector.describe(), "status": au_status.to_dict(), "flags": flags,
                         "threshold_source": threshold_source,
                         "report": report.to_dict()}
        if flags:
            metrics["flags"]["self_consistency"] += ["au/macro_f1", "au/mean_pearson", "au/mean_mae"]
    metrics["figures"] = _figures(metrics, [b.name for b in backbones])
    metrics["flags"]["self_consistency"] = [f for f in metrics["flags"]["self_consistency"] if f in metrics["figures"]]
    computed = {"generated": dict(on_generated.computed), "real": dict(on_real.computed) if on_real else {}}
    metrics["cache"] = {"root": str(cache.root), "computed": computed}

    thumbnails = []
    if config.samples_per_class and real_models:
        fake_images = _thumbnails(generated, gv, label_set, config.samples_per_class)
        real_images = _thumbnails(real, rv, label_set, config.samples_per_class)
        thumbnails = [(e.label, real_images[int(e)], fake_images[int(e)]) for e in label_set.expressions]
    metrics["seconds"] = round(time.perf_counter() - start, 3)

    from .outputs import write_all

    tmp = RunFolder.temporary(out)
    shutil.rmtree(tmp, ignore_errors=True)
    write_all(tmp, metrics, record, label_set.names, thumbnails)
    replace_dir(tmp, out)
    return EvaluateResult(out, EvaluateResult.load(out).metrics, computed, time.perf_counter() - start)


__all__ = ["METRICS_NAME", "run_evaluation"]
