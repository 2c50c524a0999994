"""Distribution metrics between real and generated feature sets, all in one call: the statistics core of evaluate.

``distribution_metrics(real, fake, ...)`` takes two ``[N, D]`` feature arrays from one backbone (and,
optionally, a class label per row) and returns a ``DistributionReport`` with

- ``fd``: Fréchet distance (Heusel et al. 2017) with a bootstrap interval (``synfer.eval.frechet``);
- ``fd_infinity``: FD extrapolated to N = infinity (Chong & Forsyth 2020), None below 5,000 generated samples;
- ``kid``: kernel distance (Bińkowski et al. 2018), mean and std over subsets (``synfer.eval.kernel``);
- ``prdc``: precision / recall (Kynkäänniemi et al. 2019, k = 3), density / coverage (Naeem et al. 2020,
  k = 5) on at most 10,000 samples per side (``synfer.eval.manifold``);
- with labels: ``per_class_kid`` and ``diversity_real`` / ``diversity_fake`` (mean pairwise L2 distance
  within each class, ``synfer.eval.diversity``); without labels, diversity over the whole set.

Every figure carries its interval or std and the number of samples it was computed on; ``to_dict()`` is
JSON-ready and records the settings. Each metric draws from its own random stream derived from ``seed``,
so switching one metric off or changing its settings leaves the others' figures unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from synfer.errors import ConfigError
from synfer.eval import diversity, frechet, kernel, manifold
from synfer.eval.arrays import (
    DEFAULT_CHUNK_BYTES,
    as_features,
    as_labels,
    rng_for,
    same_dim,
)
from synfer.eval.diversity import DiversityResult, within_class_diversity
from synfer.eval.frechet import (
    FDInfinityResult,
    FeatureStats,
    FrechetResult,
    fd_infinity,
    frechet_bootstrap,
)
from synfer.eval.kernel import (
    KIDResult,
    PerClassKID,
    kernel_distance,
    per_class_kernel_distance,
)
from synfer.eval.manifold import ManifoldResult, precision_recall_density_coverage

__all__ = ["DistributionConfig", "DistributionReport", "FeatureStats", "distribution_metrics"]

METRIC_NAMES = ("fd", "fd_infinity", "kid", "prdc", "per_class_kid", "diversity")


@dataclass(frozen=True)
class DistributionConfig:
    """Every setting of ``distribution_metrics``; the defaults are the papers' unless noted."""

    metrics: tuple[str, ...] = METRIC_NAMES
    # Fréchet distance
    bootstrap_resamples: int = 100  # 0: no interval
    confidence: float = 0.95
    ci_method: str = "centred"  # see frechet_bootstrap: the replicates shifted by their bias
    fd_eps: float = frechet.DEFAULT_EPS
    fd_infinity_min_n: int = frechet.FD_INFINITY_MIN_N
    fd_infinity_points: int = 15
    # kernel distance
    kid_subsets: int = kernel.KID_SUBSETS
    kid_subset_size: int = kernel.KID_SUBSET_SIZE
    kid_min_per_class: int = kernel.KID_MIN_PER_CLASS  # our choice, see per_class_kernel_distance
    # k-NN manifold metrics
    pr_k: int = manifold.PR_K
    dc_k: int = manifold.DC_K
    prdc_max_n: int | None = manifold.MAX_N  # dgm-eval's reduced_n
    # within-class diversity
    diversity_metric: str = "l2"
    diversity_exact_max_n: int = diversity.EXACT_MAX_N
    diversity_pairs: int = diversity.PAIRS
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(METRIC_NAMES))
        if unknown:
            raise ConfigError(f"unknown distribution metric {unknown[0]!r} (accepted: {', '.join(METRIC_NAMES)})")
        object.__setattr__(self, "metrics", tuple(self.metrics))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["metrics"] = list(self.metrics)
        return data


@dataclass(frozen=True)
class DistributionReport:
    n_real: int
    n_fake: int
    dim: int
    seed: int
    config: DistributionConfig
    fd: FrechetResult | None = None
    fd_infinity: FDInfinityResult | None = None
    kid: KIDResult | None = None
    prdc: ManifoldResult | None = None
    per_class_kid: PerClassKID | None = None
    diversity_real: DiversityResult | None = None
    diversity_fake: DiversityResult | None = None
    notes: tuple[str, ...] = ()  # why a requested figure is missing

    def to_dict(self) -> dict:
        parts = ("fd", "fd_infinity", "kid", "prdc", "per_class_kid", "diversity_real", "diversity_fake")
        return {"n_real": self.n_real, "n_fake": self.n_fake, "dim": self.dim, "seed": self.seed,
                **{name: None if getattr(self, name) is None else getattr(self, name).to_dict() for name in parts},
                "notes": list(self.notes), "config": self.config.to_dict()}


def distribution_metrics(real, fake, real_labels=None, fake_labels=None, *, seed: int = 0,
                         config: DistributionConfig | None = None, real_stats: FeatureStats | None = None,
                         fake_stats: FeatureStats | None = None, **options) -> DistributionReport:
    """FD (+ bootstrap CI), FD-infinity, KID, precision/recall/density/coverage, per-class KID and diversity.

    ``options`` override single fields of ``DistributionConfig`` (``kid_subsets=10``, ``metrics=("fd",)``);
    ``real_stats``/``fake_stats`` are cached ``FeatureStats`` of the same arrays, to skip their pass.
    Per-class KID needs both label arrays; diversity is per class for each side that has labels.
    """
    config = config or DistributionConfig()
    if options:
        fields = {field.name for field in dataclasses.fields(DistributionConfig)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(f"unknown distribution option {unknown[0]!r} (accepted: {', '.join(sorted(fields))})")
        config = dataclasses.replace(config, **options)
    x, y = as_features(real, "real features", 2), as_features(fake, "generated features", 2)
    same_dim(x, y)
    if real_labels is not None:
        real_labels = as_labels(real_labels, x.shape[0], "real labels")
    if fake_labels is not None:
        fake_labels = as_labels(fake_labels, y.shape[0], "generated labels")

    def stream(name: str) -> int:
        return int(rng_for(seed, name).integers(2**63))

    wanted, chunk, found, notes = set(config.metrics), config.chunk_bytes, {}, []
    if "fd" in wanted:
        found["fd"] = frechet_bootstrap(
            x, y, resamples=config.bootstrap_resamples, confidence=config.confidence, ci_method=config.ci_method,
            seed=stream("fd"), eps=config.fd_eps, real_stats=real_stats, fake_stats=fake_stats, chunk_bytes=chunk)
    if "fd_infinity" in wanted:
        found["fd_infinity"] = fd_infinity(real_stats or x, y, min_n=config.fd_infinity_min_n,
                                           points=config.fd_infinity_points, seed=stream("fd_infinity"),
                                           chunk_bytes=chunk)
        if found["fd_infinity"] is None:
            notes.append(f"fd_infinity: {y.shape[0]} generated samples, fewer than the {config.fd_infinity_min_n} "
                         "the 1/N extrapolation needs")
    if "kid" in wanted:
        found["kid"] = kernel_distance(x, y, subsets=config.kid_subsets, subset_size=config.kid_subset_size,
                                       seed=stream("kid"), chunk_bytes=chunk)
    if "prdc" in wanted:
        found["prdc"] = precision_recall_density_coverage(x, y, k_pr=config.pr_k, k_dc=config.dc_k,
                                                          max_n=config.prdc_max_n, seed=stream("prdc"),
                                                          chunk_bytes=chunk)
    if "per_class_kid" in wanted:
        if real_labels is None or fake_labels is None:
            notes.append("per_class_kid: needs labels for both sides")
        else:
            found["per_class_kid"] = per_class_kernel_distance(
                x, y, real_labels, fake_labels, min_per_class=config.kid_min_per_class, subsets=config.kid_subsets,
                subset_size=config.kid_subset_size, seed=stream("per_class_kid"), chunk_bytes=chunk)
    if "diversity" in wanted:
        for side, data, labels in (("real", x, real_labels), ("fake", y, fake_labels)):
            found[f"diversity_{side}"] = within_class_diversity(
                data, labels, metric=config.diversity_metric, exact_max_n=config.diversity_exact_max_n,
                pairs=config.diversity_pairs, seed=stream(f"diversity_{side}"), chunk_bytes=chunk)
    return DistributionReport(n_real=x.shape[0], n_fake=y.shape[0], dim=x.shape[1], seed=seed, config=config,
                              notes=tuple(notes), **found)
