"""Distribution metrics against closed forms, brute force, constructed point sets and torchmetrics."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

from synfer.errors import ConfigError, DatasetError
from synfer.eval.distribution import DistributionConfig, distribution_metrics
from synfer.eval.diversity import mean_pairwise_distance, within_class_diversity
from synfer.eval.frechet import (
    FeatureStats,
    fd_infinity,
    frechet_bootstrap,
    frechet_distance,
)
from synfer.eval.kernel import kernel_distance, mmd2_unbiased, per_class_kernel_distance
from synfer.eval.manifold import knn_radii, precision_recall_density_coverage


def gaussian(n: int, mean, std, seed: int, d: int = 16) -> np.ndarray:
    """n samples of N(mean, diag(std^2)); D from the arrays given, else ``d``."""
    mean, std = np.broadcast_arrays(np.asarray(mean, float), np.asarray(std, float))
    dim = mean.shape[0] if mean.ndim else d
    return np.random.default_rng(seed).standard_normal((n, dim)) * std + mean


def diagonal_fd(mu1, var1, mu2, var2) -> float:
    """FD of two Gaussians with diagonal covariances, written out: ||mu1-mu2||^2 + sum(v1 + v2 - 2 sqrt(v1 v2))."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2)))


def stats(x: np.ndarray) -> FeatureStats:
    return FeatureStats.from_features(x)


# --- Fréchet distance -------------------------------------------------------------------------------


def test_feature_stats_match_numpy_and_survive_a_round_trip(tmp_path):
    # float32, as a cache holds them, and far from the origin: centring before the Gram matters.
    x = gaussian(500, np.full(12, 40.0), np.linspace(0.5, 2, 12), 0).astype(np.float32)
    s = FeatureStats.from_features(x, chunk_bytes=4096)  # many blocks
    np.testing.assert_allclose(s.mean, x.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=0, atol=1e-11)
    assert s.n == 500 and s.dim == 12 and s.cov.dtype == np.float64
    again = FeatureStats.load(s.save(tmp_path / "real.npz"))
    assert again.n == 500 and np.array_equal(again.cov, s.cov) and np.array_equal(again.mean, s.mean)
    assert [p.name for p in tmp_path.iterdir()] == ["real.npz"]  # no temporary left behind


def test_fd_is_zero_on_itself_and_symmetric():
    a, b = stats(gaussian(800, 0.0, 1.0, 1)), stats(gaussian(600, 0.3, 1.5, 2))
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) > 1.0


def test_fd_of_two_gaussians_equals_the_closed_form():
    rng = np.random.default_rng(3)
    d = 20
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = diagonal_fd(mu1, var1, mu2, var2)
    got = frechet_distance(FeatureStats(mu1, np.diag(var1), 1), FeatureStats(mu2, np.diag(var2), 1))
    assert got == pytest.approx(expected, rel=1e-10)
    # FD is invariant under a common rotation; rotated, the covariances are dense and sqrtm must do real work.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(FeatureStats(q @ mu1, q @ np.diag(var1) @ q.T, 1),
                               FeatureStats(q @ mu2, q @ np.diag(var2) @ q.T, 1))
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_fd_on_samples_converges_to_the_closed_form():
    d = 16
    std, mu = np.linspace(0.5, 1.5, d), np.full(d, 0.1)
    expected = diagonal_fd(np.zeros(d), np.ones(d), mu, std**2)
    errors = []
    for n in (500, 4000, 32000):
        fds = [frechet_distance(stats(gaussian(n, 0.0, 1.0, s)), stats(gaussian(n, mu, std, 100 + s)))
               for s in range(3)]
        errors.append(np.mean(np.abs(np.array(fds) - expected)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02 * expected


@pytest.mark.parametrize("n_real", [30, 400])  # rank 29 of 64 (the eigenvalue route), full rank (Cholesky)
def test_fd_fast_route_agrees_with_sqrtm_also_for_singular_covariances(n_real):
    x, y = gaussian(n_real, 0.0, 1.0, 4, d=64), gaussian(40, 0.2, 1.0, 5, d=64)
    value = frechet_distance(stats(x), stats(y))
    assert np.isfinite(value) and value > 0
    # FD-infinity's last point is FD on the whole generated set, by the route the bootstrap uses too.
    tail = fd_infinity(stats(x), y, min_n=2, points=2)
    assert tail.fds[-1] == pytest.approx(value, rel=1e-6)


def test_bootstrap_interval_holds_the_value_and_shrinks_with_n():
    small = frechet_bootstrap(gaussian(1000, 0.0, 1.0, 6), gaussian(1000, 0.2, 1.2, 7), resamples=60, seed=0)
    large = frechet_bootstrap(gaussian(8000, 0.0, 1.0, 8), gaussian(8000, 0.2, 1.2, 9), resamples=60, seed=0)
    for result in (small, large):
        assert result.ci_low < result.value < result.ci_high
        assert result.bootstrap_bias > 0  # resampling with replacement adds bias, as FD's 1/N term predicts
    assert (large.ci_high - large.ci_low) < 0.6 * (small.ci_high - small.ci_low)  # ~1/sqrt(8) expected
    raw = frechet_bootstrap(gaussian(1000, 0.0, 1.0, 6), gaussian(1000, 0.2, 1.2, 7), resamples=60, seed=0,
                            ci_method="percentile")
    assert raw.ci_low == pytest.approx(small.ci_low + small.bootstrap_bias) and raw.value == small.value
    assert raw.ci_low > raw.value  # why the default centres the replicates: the plain interval misses the value
    again = frechet_bootstrap(gaussian(1000, 0.0, 1.0, 6), gaussian(1000, 0.2, 1.2, 7), resamples=60, seed=0)
    other = frechet_bootstrap(gaussian(1000, 0.0, 1.0, 6), gaussian(1000, 0.2, 1.2, 7), resamples=60, seed=1)
    assert again == small and other.ci_low != small.ci_low


def test_bootstrap_refuses_statistics_of_other_features():
    x, y = gaussian(100, 0.0, 1.0, 1), gaussian(100, 0.0, 1.0, 2)
    with pytest.raises(DatasetError, match="do not belong"):
        frechet_bootstrap(x, y, resamples=2, real_stats=stats(x[:50]))
    with pytest.raises(ConfigError, match="accepted"):
        frechet_bootstrap(x, y, ci_method="bca")


def test_fd_infinity_extrapolates_the_one_over_n_bias_away():
    # Real side: the exact population N(0, I); generated: N(mu, I) with ||mu||^2 = 1, so FD_inf = 1. With equal
    # covariances the first-order noise of the covariance term cancels and the D^2/(4N) bias dominates FD_N.
    d = 128
    mu = np.zeros(d)
    mu[0] = 1.0
    fake = gaussian(20000, mu, 1.0, 10)
    result = fd_infinity(FeatureStats(np.zeros(d), np.eye(d), 10**6), fake, seed=0)
    largest = result.fds[-1]
    assert result.sizes[0] == 5000 and result.sizes[-1] == 20000 and len(result.sizes) == 15
    assert largest - 1.0 > 0.15  # the bias to remove is real ...
    assert abs(result.value - 1.0) < 0.08  # ... and the extrapolation removes it
    assert abs(result.value - 1.0) < 0.4 * abs(largest - 1.0)
    assert 3000 < result.slope < 5500  # about D^2/4 + D (covariance and mean-term bias)
    assert fd_infinity(FeatureStats(np.zeros(d), np.eye(d), 10**6), fake[:4999]) is None


# --- kernel distance -----------------------------------------------------------------------------------


def test_mmd2_unbiased_matches_the_definition_written_as_loops():
    x, y = gaussian(5, 0.0, 1.0, 11), gaussian(7, 0.5, 1.0, 12)
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(7)) / (5 * 7)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_under_a_shift():
    x = gaussian(1500, 0.0, 1.0, 13)
    same = kernel_distance(x, gaussian(1500, 0.0, 1.0, 14), subsets=20, subset_size=300)
    shifted = kernel_distance(x, gaussian(1500, 0.5, 1.0, 15), subsets=20, subset_size=300)
    assert abs(same.mean) < 3 * same.std
    assert shifted.mean > 10 * shifted.std > 0
    assert (same.subset_size, same.n_real, same.n_fake) == (300, 1500, 1500)


def test_kid_routes_agree_on_the_same_subsets():
    x, y = gaussian(300, 0.0, 1.0, 40), gaussian(250, 0.2, 1.0, 41)
    per_subset = kernel_distance(x, y, subsets=15, subset_size=120, method="subsets", seed=2)
    pooled = kernel_distance(x, y, subsets=15, subset_size=120, method="pooled", seed=2, chunk_bytes=20_000)
    assert pooled.mean == pytest.approx(per_subset.mean, abs=1e-12, rel=1e-9)
    assert pooled.std == pytest.approx(per_subset.std, abs=1e-12, rel=1e-9)
    assert kernel_distance(x, y, subsets=15, subset_size=120, seed=3).mean != per_subset.mean  # the seed matters


def test_kid_is_unbiased_over_many_draws():
    values, biased = [], []
    for seed in range(300):
        x, y = gaussian(40, 0.0, 1.0, 2 * seed), gaussian(40, 0.0, 1.0, 2 * seed + 1)
        values.append(kernel_distance(x, y, subsets=1, subset_size=40).mean)
        def k(a, b):
            return (a @ b.T / a.shape[1] + 1) ** 3
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())  # the V-statistic, diagonals included
    values, biased = np.array(values), np.array(biased)
    standard_error = values.std() / np.sqrt(len(values))
    assert abs(values.mean()) < 3 * standard_error
    assert (values < 0).any()
    assert biased.mean() > 10 * standard_error  # the check has power: the biased estimator fails it


def test_per_class_kid_reports_counts_skips_small_classes_and_finds_the_bad_class():
    rng = np.random.default_rng(16)
    real_labels, fake_labels = rng.integers(0, 3, 900), rng.integers(0, 3, 900)
    real_labels[:5], fake_labels[:5] = 3, 3  # class 3: 5 real (fewer, by chance at most), too few
    real, fake = gaussian(900, 0.0, 1.0, 17), gaussian(900, 0.0, 1.0, 18)
    fake[fake_labels == 2] += 0.7  # only class 2 is off
    result = per_class_kernel_distance(real, fake, real_labels, fake_labels, min_per_class=20, subsets=10)
    assert set(result.per_class) == {"0", "1", "2"}
    assert result.skipped["3"] == (int((real_labels == 3).sum()), int((fake_labels == 3).sum()))
    for name in ("0", "1", "2"):
        entry = result.per_class[name]
        assert (entry.n_real, entry.n_fake) == ((real_labels == int(name)).sum(), (fake_labels == int(name)).sum())
        assert entry.subset_size == min(1000, entry.n_real, entry.n_fake)
    assert result.per_class["2"].mean > 5 * max(abs(result.per_class["0"].mean), abs(result.per_class["1"].mean))
    # A class's figure comes from its own stream: it does not move when another class is dropped.
    keep = real_labels != 1
    keep_fake = fake_labels != 1
    fewer = per_class_kernel_distance(real[keep], fake[keep_fake], real_labels[keep], fake_labels[keep_fake],
                                      min_per_class=20, subsets=10)
    assert fewer.per_class["2"] == result.per_class["2"]
    json.dumps(result.to_dict(), allow_nan=False)


# --- cross-checks against torchmetrics ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_fd_and_kid_agree_with_torchmetrics_on_given_features():
    torch = pytest.importorskip("torch")
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    kid_module = pytest.importorskip("torchmetrics.image.kid")

    class GivenFeatures(torch.nn.Module):
        """The 'backbone' is the identity: each input row is its own feature vector."""

        num_features = 16

        def forward(self, x):
            return x.flatten(1)

    x, y = gaussian(300, 0.0, 1.0, 19), gaussian(300, 0.3, 1.3, 20)
    fid = fid_module.FrechetInceptionDistance(feature=GivenFeatures())  # no torch-fidelity, no torchvision needed
    fid.update(torch.from_numpy(x), real=True)
    fid.update(torch.from_numpy(y), real=False)
    assert float(fid.compute()) == pytest.approx(frechet_distance(stats(x), stats(y)), rel=1e-6)

    kid = kid_module.KernelInceptionDistance(feature=GivenFeatures(), subsets=1, subset_size=300)
    kid.update(torch.from_numpy(x), real=True)
    kid.update(torch.from_numpy(y), real=False)
    # One subset of the whole set on each side: the random permutations cannot change the estimate.
    assert float(kid.compute()[0]) == pytest.approx(kernel_distance(x, y, subsets=1, subset_size=300).mean, rel=1e-9)


# --- precision, recall, density, coverage ----------------------------------------------------------------


def brute_force_prdc(real, fake, k_pr, k_dc):
    """The papers' definitions on full distance matrices (scipy's cdist), self excluded by sorting past 0."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    real_r = np.sort(rr, axis=1)  # column 0 is the point itself
    fake_r = np.sort(ff, axis=1)
    r_pr, r_dc, f_pr = real_r[:, k_pr], real_r[:, k_dc], fake_r[:, k_pr]
    return {
        "precision": (rf <= r_pr[:, None]).any(axis=0).mean(),
        "recall": (rf <= f_pr[None, :]).any(axis=1).mean(),
        "density": (rf <= r_dc[:, None]).sum(axis=0).mean() / k_dc,
        "coverage": (rf.min(axis=1) <= r_dc).mean(),
        "radii": (r_pr, r_dc),
    }


def test_chunked_knn_metrics_equal_brute_force_exactly():
    real, fake = gaussian(300, 0.0, 1.0, 21), gaussian(250, 0.4, 1.1, 22)
    expected = brute_force_prdc(real, fake, 3, 5)
    got = precision_recall_density_coverage(real, fake, max_n=None, equal_sizes=False, chunk_bytes=50_000)
    assert (got.precision, got.recall, got.density, got.coverage) == (
        expected["precision"], expected["recall"], expected["density"], expected["coverage"])
    radii = knn_radii(real, (3, 5), chunk_bytes=20_000)
    np.testing.assert_allclose(radii[3], expected["radii"][0], rtol=1e-9)
    np.testing.assert_allclose(radii[5], expected["radii"][1], rtol=1e-9)


def test_knn_memory_stays_within_the_chunk_budget():
    real, fake = gaussian(2500, 0.0, 1.0, 23), gaussian(2500, 0.1, 1.0, 24)  # a full 2500 x 2500 matrix: 50 MB
    tracemalloc.start()
    try:
        precision_recall_density_coverage(real, fake, max_n=None, chunk_bytes=2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20  # the 1 MiB budget, float64 copies of both sets (0.3 MB each), a few vectors


def test_fake_drawn_from_real_is_precise_and_covers():
    real = gaussian(2000, 0.0, 1.0, 25)
    fake = real[np.random.default_rng(0).choice(2000, 1000, replace=False)]
    result = precision_recall_density_coverage(real, fake, max_n=None, equal_sizes=False)
    assert result.precision == 1.0
    assert result.coverage > 0.9


def test_concentrated_fake_is_precise_but_not_diverse():
    real = gaussian(2000, 0.0, 1.0, 26, d=4)
    fake = gaussian(2000, 0.0, 0.2, 27, d=4)  # inside a small core of the real support
    result = precision_recall_density_coverage(real, fake)
    assert result.precision > 0.9
    assert result.recall < 0.2 and result.coverage < 0.3


def test_distant_fake_scores_zero_and_matching_fake_has_density_one():
    real = gaussian(2000, 0.0, 1.0, 28)
    far = precision_recall_density_coverage(real, real + 100.0)
    assert (far.precision, far.recall, far.density, far.coverage) == (0.0, 0.0, 0.0, 0.0)
    same = precision_recall_density_coverage(real, gaussian(2000, 0.0, 1.0, 29))
    assert 0.85 < same.density < 1.15
    assert same.coverage > 0.9 and same.precision > 0.6 and same.recall > 0.6


def test_subsampling_caps_both_sides_at_one_size():
    real, fake = gaussian(700, 0.0, 1.0, 30), gaussian(400, 0.0, 1.0, 31)
    result = precision_recall_density_coverage(real, fake, max_n=500, seed=3)
    assert (result.n_real, result.n_fake, result.subsampled) == (400, 400, True)
    assert result == precision_recall_density_coverage(real, fake, max_n=500, seed=3)
    alone = precision_recall_density_coverage(real, fake, max_n=500, equal_sizes=False)
    assert (alone.n_real, alone.n_fake) == (500, 400)


# --- within-class diversity -----------------------------------------------------------------------------


def test_diversity_is_exact_for_small_classes_and_sampled_for_large_ones():
    x = gaussian(400, 0.0, 1.0, 32)
    exact = mean_pairwise_distance(x)
    assert exact.exact and exact.pairs == 400 * 399 // 2 and exact.sem == 0.0
    assert exact.mean == pytest.approx(pdist(x).mean(), rel=1e-10)
    assert exact.std == pytest.approx(pdist(x).std(), rel=1e-8)
    cosine = mean_pairwise_distance(x, metric="cosine")
    assert cosine.mean == pytest.approx(pdist(x, metric="cosine").mean(), rel=1e-10)
    sampled = mean_pairwise_distance(x, exact_max_n=100, pairs=20000, seed=1)
    assert not sampled.exact and sampled.pairs == 20000
    assert abs(sampled.mean - exact.mean) < 4 * sampled.sem
    sampled_cosine = mean_pairwise_distance(x, metric="cosine", exact_max_n=100, pairs=20000, seed=1)
    assert abs(sampled_cosine.mean - cosine.mean) < 4 * sampled_cosine.sem


def test_diversity_per_class_sees_a_collapsed_class():
    labels = np.repeat(["happy", "sad", "fear"], [300, 300, 1])
    x = gaussian(601, 0.0, 1.0, 33)
    x[labels == "sad"] = x[labels == "sad"][0] + 0.01 * x[labels == "sad"]  # mode collapse: one face, tiny variations
    result = within_class_diversity(x, labels)
    assert set(result.per_class) == {"fear", "happy", "sad"}
    assert result.per_class["sad"].mean < 0.05 * result.per_class["happy"].mean
    assert result.per_class["fear"].mean is None and result.per_class["fear"].n == 1
    assert within_class_diversity(x).per_class["all"].n == 601


# --- the one-call report --------------------------------------------------------------------------------


def test_distribution_metrics_report_is_complete_and_json_ready():
    real, fake = gaussian(1200, 0.0, 1.0, 34), gaussian(1500, 0.2, 1.1, 35)
    real_labels, fake_labels = np.arange(1200) % 4, np.arange(1500) % 4
    report = distribution_metrics(real, fake, real_labels, fake_labels, seed=7, bootstrap_resamples=10, kid_subsets=10,
                                  prdc_max_n=800)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["fd"]["ci"][0] < data["fd"]["value"] < data["fd"]["ci"][1]
    assert data["fd"]["n_real"] == 1200 and data["fd"]["n_fake"] == 1500
    assert data["fd_infinity"] is None and "fd_infinity" in data["notes"][0]
    assert data["kid"]["n_real"] == 1200 and data["kid"]["std"] > 0
    assert data["prdc"]["n_real"] == data["prdc"]["n_fake"] == 800
    assert set(data["per_class_kid"]["per_class"]) == {"0", "1", "2", "3"}
    assert data["diversity_fake"]["per_class"]["0"]["n"] == 375
    assert data["config"]["kid_subsets"] == 10 and data["seed"] == 7
    assert report.fd.value == pytest.approx(frechet_distance(stats(real), stats(fake)))
    # Each metric has its own stream: turning the others off leaves KID's figure as it was.
    alone = distribution_metrics(real, fake, seed=7, config=DistributionConfig(metrics=("kid",), kid_subsets=10))
    assert alone.kid == report.kid and alone.fd is None and alone.per_class_kid is None


def test_distribution_metrics_rejects_bad_input_in_one_line():
    x = gaussian(50, 0.0, 1.0, 36)
    with pytest.raises(ConfigError, match="accepted"):
        distribution_metrics(x, x, kid_subset=10)
    with pytest.raises(ConfigError, match="accepted"):
        distribution_metrics(x, x, metrics=("fid",))
    with pytest.raises(DatasetError, match="dimensions"):
        distribution_metrics(x, x[:, :10])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        distribution_metrics(x, bad)
    with pytest.raises(DatasetError, match="one label per"):
        distribution_metrics(x, x, np.zeros(49))
    report = distribution_metrics(x, x, metrics=("per_class_kid",))
    assert report.per_class_kid is None and "labels" in report.notes[0]
