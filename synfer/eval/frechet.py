"""Fréchet distance between feature sets: the point value, a bootstrap interval and FD-infinity.

The Fréchet distance (FD; FID with Inception features, Heusel et al. 2017, "GANs Trained by a Two Time-Scale
Update Rule Converge to a Local Nash Equilibrium") between Gaussians fitted to two feature sets is

    FD = ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2)).

``frechet_distance`` computes it the standard way (``scipy.linalg.sqrtm`` of the product, as pytorch-fid
does); the bootstrap and FD-infinity evaluate it many times and use the symmetric eigenvalue form
``tr((S_r S_g)^(1/2)) = sum sqrt(eig(L^T S_g L))`` with ``L L^T = S_r`` (Cholesky, or the PSD square root
when S_r is singular): the same number (the matrices are similar) at a fraction of sqrtm's cost.

``FeatureStats`` (mean, covariance, n) is what FD needs of one side: compute it once per set and cache it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg

from synfer.errors import ConfigError, DatasetError
from synfer.eval.arrays import (
    DEFAULT_CHUNK_BYTES,
    as_features,
    chunks,
    positive_int,
    rng_for,
    rows64,
    rows_per_chunk,
    same_dim,
)

logger = logging.getLogger(__name__)

DEFAULT_EPS = 1e-6
"""Added to both covariances' diagonals when their product is too singular for sqrtm (pytorch-fid's value)."""


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean and unbiased covariance (ddof=1, like ``np.cov`` and pytorch-fid) of one feature set, float64."""

    mean: np.ndarray  # [D]
    cov: np.ndarray  # [D, D]
    n: int

    def __post_init__(self) -> None:
        mean, cov = np.asarray(self.mean, dtype=np.float64), np.asarray(self.cov, dtype=np.float64)
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise DatasetError("feature statistics need a [D] mean and a [D, D] covariance, "
                               f"got {mean.shape} and {cov.shape}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "n", int(self.n))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FeatureStats:
        """Two passes in row blocks (mean, then centred Gram): float64 accuracy without a float64 copy of the set."""
        x = as_features(features, "features", min_rows=2)
        mean, gram = _centred_moments(x, None, None, chunk_bytes)
        return cls(mean, gram / (x.shape[0] - 1), x.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (.npz), atomically: a cache entry is either complete or absent."""
        from synfer.data.format import atomic_path

        path = Path(path)
        # A file object, so that numpy does not append ".npz" to the temporary name.
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mean=self.mean, cov=self.cov, n=np.int64(self.n))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                return cls(data["mean"], data["cov"], int(data["n"]))
        except (OSError, KeyError, ValueError) as error:
            raise DatasetError(f"cannot read feature statistics from {path}: {error}") from None

    def to_dict(self) -> dict:
        return {"n": self.n, "dim": self.dim}


def _centred_moments(x: np.ndarray, rows: np.ndarray | None, weights: np.ndarray | None, chunk_bytes: int,
                     centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and centred scatter matrix ``sum w_i (x_i - m)(x_i - m)^T`` of ``x[rows]`` (all rows when None).

    ``weights`` are the times each row was drawn (1 when None). Accumulated about ``centre`` (the plain
    mean when None), then moved to the weighted mean, so that large feature offsets never cancel
    catastrophically.
    """
    count = x.shape[0] if rows is None else len(rows)
    step = rows_per_chunk(3 * 8 * x.shape[1], chunk_bytes)
    w = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64)
    root_w = np.sqrt(w)
    total = w.sum()

    def block(part: slice) -> np.ndarray:
        return rows64(x, part if rows is None else rows[part])

    if centre is None:
        centre = np.zeros(x.shape[1])
        for part in chunks(count, step):
            centre += w[part] @ block(part)
        centre /= total
    shift = np.zeros(x.shape[1])
    gram = np.zeros((x.shape[1], x.shape[1]))
    for part in chunks(count, step):
        centred = block(part) - centre
        shift += w[part] @ centred
        if weights is not None:
            centred *= root_w[part, None]
        gram += centred.T @ centred  # one operand transposed: numpy takes the symmetric product (syrk), half the work
    shift /= total
    gram -= total * np.outer(shift, shift)
    return centre + shift, (gram + gram.T) / 2  # symmetric to the last bit, for eigh


def _check_pair(real: FeatureStats, fake: FeatureStats) -> None:
    if real.dim != fake.dim:
        raise DatasetError(f"real statistics have {real.dim} dimensions but generated ones {fake.dim}; "
                           "both sides must come from the same backbone")


def frechet_distance(real: FeatureStats, fake: FeatureStats, *, eps: float = DEFAULT_EPS) -> float:
    """FD between two Gaussians (Heusel et al. 2017), computed like pytorch-fid.

    ``sqrtm(S_r S_g)``; if that is not finite (a singular product), ``eps`` is added to both diagonals and
    it is taken again; an imaginary part from rounding is dropped when the diagonal's is below 1e-3. A
    larger imaginary part means the Schur route failed on an ill-conditioned product: pytorch-fid raises
    there; here the symmetric eigenvalue form (exact for positive semi-definite covariances) is used
    instead and a warning logged.
    """
    _check_pair(real, fake)
    diff = real.mean - fake.mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = scipy.linalg.sqrtm(real.cov @ fake.cov)
        if not np.isfinite(covmean).all():
            logger.info("FD: singular covariance product; adding %g to the diagonals", eps)
            offset = np.eye(real.dim) * eps
            covmean = scipy.linalg.sqrtm((real.cov + offset) @ (fake.cov + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            logger.warning("FD: sqrtm left an imaginary part of %.3g; using the eigenvalue form",
                           float(np.max(np.abs(covmean.imag))))
            return _fd_eigh(real.mean, real.cov, fake.mean, fake.cov)
        covmean = covmean.real
    return float(diff @ diff + np.trace(real.cov) + np.trace(fake.cov) - 2 * np.trace(covmean))


def _root(cov: np.ndarray) -> np.ndarray:
    """A matrix R with R R^T = cov: the Cholesky factor (cheap), or the PSD square root when cov is singular."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(cov)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _trace_sqrt_product(root_a: np.ndarray, b: np.ndarray) -> float:
    """``tr((A B)^(1/2))`` given R with R R^T = A: R^T B R is symmetric and has the eigenvalues of A B."""
    inner = root_a.T @ b @ root_a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def _fd_eigh(mean_a, cov_a, mean_b, cov_b, root_a: np.ndarray | None = None) -> float:
    diff = mean_a - mean_b
    root = _root(cov_a) if root_a is None else root_a
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * _trace_sqrt_product(root, cov_b))


@dataclass(frozen=True)
class FrechetResult:
    """FD with a bootstrap interval. ``bootstrap_bias`` = mean of the resampled FDs minus ``value``."""

    value: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    resamples: int
    ci_method: str
    bootstrap_bias: float | None
    n_real: int
    n_fake: int

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": None if self.ci_low is None else [self.ci_low, self.ci_high],
                "confidence": self.confidence, "resamples": self.resamples, "ci_method": self.ci_method,
                "bootstrap_bias": self.bootstrap_bias, "n_real": self.n_real, "n_fake": self.n_fake}


CI_METHODS = ("centred", "percentile")


def frechet_bootstrap(real, fake, *, resamples: int = 100, confidence: float = 0.95, ci_method: str = "centred",
                      seed: int = 0, eps: float = DEFAULT_EPS, real_stats: FeatureStats | None = None,
                      fake_stats: FeatureStats | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FrechetResult:
    """FD of two feature sets with a percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13).

    Each of ``resamples`` replicates draws both sides again, with replacement, at their own sizes (seeded)
    and recomputes FD. FD is biased upwards by about c/N (Chong & Forsyth 2020), and a resample with
    replacement holds only ~63% distinct points, so the replicates sit higher than the point value by
    about that bias again; with real sizes and dimensions the plain percentile interval usually lies
    entirely above the point value. ``ci_method="centred"`` (default) therefore shifts the replicates by
    their mean bias before taking the percentiles: the interval then describes the sampling spread of FD
    at this N around the value reported. ``"percentile"`` gives the unshifted interval.

    Cost per replicate: two weighted Gram matrices (N x D^2 each), a D x D Cholesky factor and a symmetric
    eigenvalue problem; ``resamples=0`` skips the interval. ``real_stats``/``fake_stats``: cached
    statistics of the same sets.
    """
    if ci_method not in CI_METHODS:
        raise ConfigError(f"unknown ci_method {ci_method!r} (accepted: {', '.join(CI_METHODS)})")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    resamples = positive_int(resamples, "resamples", minimum=0)
    x, y = as_features(real, "real features", 2), as_features(fake, "generated features", 2)
    same_dim(x, y)
    stats_x = real_stats or FeatureStats.from_features(x, chunk_bytes=chunk_bytes)
    stats_y = fake_stats or FeatureStats.from_features(y, chunk_bytes=chunk_bytes)
    for stats, data, side in ((stats_x, x, "real"), (stats_y, y, "generated")):
        if stats.n != data.shape[0] or stats.dim != data.shape[1]:
            raise DatasetError(f"cached {side} statistics (n={stats.n}, D={stats.dim}) do not belong to the "
                               f"{side} features given (n={data.shape[0]}, D={data.shape[1]})")
    value = frechet_distance(stats_x, stats_y, eps=eps)
    if resamples == 0:
        return FrechetResult(value, None, None, confidence, 0, ci_method, None, x.shape[0], y.shape[0])
    rng = rng_for(seed, "fd-bootstrap")
    replicates = np.empty(resamples)
    for b in range(resamples):
        moments = []
        for data, stats in ((x, stats_x), (y, stats_y)):
            n = data.shape[0]
            counts = np.bincount(rng.integers(0, n, n), minlength=n)
            rows = np.flatnonzero(counts)  # only the drawn rows: ~63% of the set
            mean, scatter = _centred_moments(data, rows, counts[rows], chunk_bytes, centre=stats.mean)
            moments.append((mean, scatter / (n - 1)))
        (mean_x, cov_x), (mean_y, cov_y) = moments
        replicates[b] = _fd_eigh(mean_x, cov_x, mean_y, cov_y)
    bias = float(replicates.mean() - value)
    alpha = 1 - confidence
    low, high = np.quantile(replicates - (bias if ci_method == "centred" else 0.0), [alpha / 2, 1 - alpha / 2])
    return FrechetResult(value, float(low), float(high), confidence, resamples, ci_method, bias, x.shape[0], y.shape[0])


@dataclass(frozen=True)
class FDInfinityResult:
    """FD extrapolated to infinitely many generated samples, with the points the line was fitted to."""

    value: float
    slope: float  # FD_N ~ value + slope / N
    sizes: tuple[int, ...]
    fds: tuple[float, ...]
    n_real: int
    n_fake: int

    def to_dict(self) -> dict:
        return {"value": self.value, "slope": self.slope, "sizes": list(self.sizes), "fds": list(self.fds),
                "n_real": self.n_real, "n_fake": self.n_fake}


FD_INFINITY_MIN_N = 5000


def fd_infinity(real, fake, *, min_n: int = FD_INFINITY_MIN_N, points: int = 15, seed: int = 0,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FDInfinityResult | None:
    """FD-infinity (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find them").

    FD_N is biased by a term that is, to first order, linear in 1/N. FD is computed at ``points`` sizes
    N_i evenly spaced from ``min(min_n, N // 2)`` to N (the number of generated samples), a line is fitted
    to (1/N_i, FD_N_i) by least squares and its value at 1/N = 0 reported. As in the paper (and dgm-eval),
    only the generated side is subsampled; ``real`` (features or cached ``FeatureStats``) is used whole, so
    the bias from the real set's own finite size stays in the intercept: FD-infinity removes the bias of
    the generated side only, and the real set should be large too.

    Returns None when N < ``min_n`` (5,000, the smallest N of the paper's fit): below a few thousand
    samples the covariance of a high-dimensional feature set (D = 1,024-2,048) is too poorly estimated for
    the 1/N term to dominate, and the extrapolation is not trustworthy. Between 5,000 and 10,000 the fit
    starts at N/2 so that it spans a factor of two. Deviation from the paper, for cost: the subsets are
    nested prefixes of one seeded permutation (the paper draws a fresh subset per size), so all 15 FDs cost
    one pass over the data plus 15 D x D symmetric eigenvalue problems.
    """
    points = positive_int(points, "points", minimum=2)
    min_n = positive_int(min_n, "min_n", minimum=2)
    y = as_features(fake, "generated features", 2)
    n = y.shape[0]
    if n < min_n:
        return None
    if isinstance(real, FeatureStats):
        stats_x = real
        if stats_x.dim != y.shape[1]:
            raise DatasetError(f"real statistics have {stats_x.dim} dimensions but generated features {y.shape[1]}")
    else:
        x = as_features(real, "real features", 2)
        same_dim(x, y)
        stats_x = FeatureStats.from_features(x, chunk_bytes=chunk_bytes)
    sizes = np.unique(np.linspace(min(min_n, n // 2), n, points).astype(np.int64))
    order = rng_for(seed, "fd-infinity").permutation(n)
    root_x, trace_x = _root(stats_x.cov), float(np.trace(stats_x.cov))
    # Running sums over the growing prefix, about a fixed centre (the mean of the first block) for accuracy.
    centre = rows64(y, np.sort(order[:sizes[0]])).mean(axis=0)
    total, gram, done = np.zeros(y.shape[1]), np.zeros((y.shape[1], y.shape[1])), 0
    step = rows_per_chunk(2 * 8 * y.shape[1], chunk_bytes)
    fds = []
    for size in sizes:
        for part in chunks(size - done, step):
            block = rows64(y, np.sort(order[done + part.start:done + part.stop])) - centre
            total += block.sum(axis=0)
            gram += block.T @ block
        done = size
        shift = total / size
        cov = (gram - size * np.outer(shift, shift)) / (size - 1)
        diff = stats_x.mean - (centre + shift)
        fds.append(float(diff @ diff + trace_x + np.trace(cov) - 2 * _trace_sqrt_product(root_x, (cov + cov.T) / 2)))
    slope, intercept = np.polyfit(1.0 / sizes, np.asarray(fds), 1)
    return FDInfinityResult(float(intercept), float(slope), tuple(int(s) for s in sizes), tuple(fds), stats_x.n, n)
