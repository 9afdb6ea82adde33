"""The 8x8 digits experiment (chapter 06): data split, classifier features, Frechet distance and its bootstrap
interval, the kernel distance (KID) and its paired bootstrap, the cost factor."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits

from diffnotes import covariance as cv
from diffnotes import digits as dg
from diffnotes import metrics, nets, schedules, skipstep

W = nets.WEIGHTS_DIR


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def split():
    return dg.load_split(n_test=500, seed=0)


def test_split_deterministic_disjoint_and_scaled(split):
    again = dg.load_split(n_test=500, seed=0)
    assert torch.equal(split.x_train, again.x_train) and torch.equal(split.x_test, again.x_test)
    other = dg.load_split(n_test=500, seed=1)
    assert not torch.equal(split.perm, other.perm)
    assert split.x_train.shape == (1297, 64) and split.x_test.shape == (500, 64)
    assert torch.equal(split.perm.sort().values, torch.arange(1797))          # a permutation: disjoint, complete
    raw = load_digits()
    te = split.perm[:500].numpy()
    np.testing.assert_allclose(split.x_test.numpy(), raw.data[te] / 8 - 1, atol=1e-6)
    assert torch.equal(split.y_test, torch.as_tensor(raw.target[te]))
    assert float(split.x_train.min()) == -1.0 and float(split.x_train.max()) == 1.0


@pytest.mark.parametrize("kw", [{"n_test": 0}, {"n_test": 1797}, {"seed": -1}, {"n_test": 2.5}])
def test_split_bad_input(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        dg.load_split(**kw)


def test_empirical_draws_rows_seeded(split):
    data = dg.Empirical(split.x_train)
    a = data.sample(64, generator=torch.Generator().manual_seed(5))
    b = data.sample(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and data.d == 64
    # every draw is a row of the training set
    d2 = torch.cdist(a.double(), split.x_train.double()).min(1).values
    assert float(d2.max()) == 0.0
    with pytest.raises(ValueError, match="x"):
        dg.Empirical(torch.zeros(3))


def test_classifier_features_shape_and_seeded_init():
    a, b = dg.Classifier(seed=3), dg.Classifier(seed=3)
    x = torch.randn(7, 64)
    assert dg.features(a, x).shape == (7, 64) and dg.features(a, x).dtype == torch.float64
    assert a(x).shape == (7, 10)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), dg.Classifier(seed=4)(x))


def test_shipped_classifier_accuracy(split):
    clf, meta = nets.load(W / "digits_classifier.pt", cls=dg.Classifier)
    acc = dg.accuracy(clf, split.x_test, split.y_test)
    assert acc >= 0.9
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-12)


def _sqrtm_fd(m1, C1, m2, C2):
    """Independent formula: scipy's matrix square root of C1 C2 (FID's usual implementation)."""
    s = scipy.linalg.sqrtm(C1 @ C2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(C1 + C2 - 2 * s))


def test_frechet_against_scipy_and_closed_form():
    g = torch.Generator().manual_seed(0)
    B, k = 4, 6
    A = torch.randn(B, k, k, dtype=torch.float64, generator=g)
    Bm = torch.randn(B, k, k, dtype=torch.float64, generator=g)
    C1, C2 = A @ A.transpose(-1, -2) + 0.1 * torch.eye(k), Bm @ Bm.transpose(-1, -2)
    m1, m2 = torch.randn(B, k, dtype=torch.float64, generator=g), torch.randn(B, k, dtype=torch.float64, generator=g)
    fd = dg.frechet_batched(m1, C1, m2, C2)
    for i in range(B):
        ref = _sqrtm_fd(m1[i].numpy(), C1[i].numpy(), m2[i].numpy(), C2[i].numpy())
        assert float(fd[i]) == pytest.approx(ref, rel=1e-8, abs=1e-8)
        assert float(fd[i]) == pytest.approx(float(metrics.frechet_distance(m1[i], C1[i], m2[i], C2[i])), rel=1e-10)
    # commuting (diagonal) covariances: |m1 - m2|^2 + sum (s1 - s2)^2
    s1, s2 = torch.rand(k, dtype=torch.float64, generator=g) + 0.5, torch.rand(k, dtype=torch.float64, generator=g)
    got = dg.frechet_batched(m1[0], torch.diag(s1 ** 2), m2[0], torch.diag(s2 ** 2))
    assert float(got) == pytest.approx(float(((m1[0] - m2[0]) ** 2).sum() + ((s1 - s2) ** 2).sum()), rel=1e-10)


def test_bootstrap_interval_covers_the_estimators_mean():
    """Two samples of N(0, I) and N(0.3 e_1, I) in k = 8 dims, n = 200 each: the mean of the estimator over 400
    independent pairs (Monte Carlo, its own error ~1%) lies in the 95% bootstrap interval of single pairs in at
    least 80% of 40 pairs (the nominal rate is 95%; a wrong spread, e.g. sd / sqrt(n), fails by far)."""
    g = torch.Generator().manual_seed(1)
    k, n = 8, 200
    shift = torch.zeros(k, dtype=torch.float64)
    shift[0] = 0.3
    draw = lambda m: (torch.randn(m, n, k, dtype=torch.float64, generator=g),
                      torch.randn(m, n, k, dtype=torch.float64, generator=g) + shift)
    a, b = draw(400)
    mean_fd = float(dg.frechet_batched(*dg.gaussian_stats(a), *dg.gaussian_stats(b)).mean())
    assert mean_fd > 0.09            # above the population value 0.09: the estimator's upward bias
    a, b = draw(40)
    cover = [(ci.lo <= mean_fd <= ci.hi) for ci in
             (dg.frechet_bootstrap(a[i], b[i], n_boot=100, generator=g) for i in range(40))]
    assert sum(cover) >= 32, f"coverage {sum(cover)}/40"


def test_floor_interval_covers_a_second_floor(split):
    """The floor measured with training images 0..499 has a 95% interval that covers the floor measured with the
    disjoint training images 500..999 (the same law, an independent draw)."""
    clf, _ = nets.load(W / "digits_classifier.pt", cls=dg.Classifier)
    ft = dg.features(clf, split.x_test)
    g = torch.Generator().manual_seed(2)
    ci = dg.frechet_bootstrap(dg.features(clf, split.x_train[:500]), ft, n_boot=200, generator=g)
    second = dg.frechet_bootstrap(dg.features(clf, split.x_train[500:1000]), ft, n_boot=20, generator=g).value
    assert ci.lo <= second <= ci.hi, f"{second:.3f} not in {ci}"
    assert ci.bias > 0               # resampling with replacement inflates the distance
    # a clearly different set (held-out images plus noise of std 0.5) is far above the floor's interval
    noisy = (split.x_test + 0.5 * torch.randn(split.x_test.shape, generator=g)).clamp(-1, 1)
    assert dg.frechet_bootstrap(dg.features(clf, noisy), ft, n_boot=20, generator=g).value > ci.hi


def test_frechet_bootstrap_bad_input():
    with pytest.raises(ValueError, match="fa and fb"):
        dg.frechet_bootstrap(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="n_boot"):
        dg.frechet_bootstrap(torch.randn(5, 3), torch.randn(5, 3), n_boot=2)
    with pytest.raises(ValueError, match="level"):
        dg.frechet_bootstrap(torch.randn(5, 3), torch.randn(5, 3), level=1.5)


def test_cost_factor_from_counted_passes(split):
    """A 3-step OCM run with the shipped networks: 3 score forward passes, 3 head passes, no VJP; the factor is
    1 + P_head / P_score.  DDPM: factor 1."""
    net, _ = nets.load(W / "digits_score.pt")
    head, _ = nets.load(W / "digits_head_ocm.pt")
    sch = schedules.linear(1000)
    x = torch.randn(8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = skipstep.skip_step("ocm", nets.NetScore(net), x, sch, skipstep.even_steps(1000, 3),
                             heads=cv.Heads({"ocm": head}))
    assert run.passes == {"forward": 3, "vjp": 0, "head": 3}
    ps, ph = dg.n_params(net), dg.n_params(head)
    assert dg.cost_factor(run.passes, 3, ps, ph) == pytest.approx(1 + ph / ps)
    run = skipstep.skip_step("beta", nets.NetScore(net), x, sch, skipstep.even_steps(1000, 3))
    assert dg.cost_factor(run.passes, 3, ps) == 1.0
    assert dg.cost_factor({"forward": 1, "vjp": 2, "head": 0}, 1, 10) == 1 + 2 * dg.VJP_COST
    with pytest.raises(ValueError, match="p_head"):
        dg.cost_factor({"forward": 3, "vjp": 0, "head": 3}, 3, ps)


# ---- KID and the paired bootstrap ---------------------------------------------------------------------------------
def _kid_loops(a, b):
    """The unbiased MMD^2 with k(x, y) = (x.y / k + 1)^3, by explicit sums (numpy, independent of the package)."""
    a, b = a.numpy(), b.numpy()
    k = lambda x, y: (x @ y / a.shape[1] + 1.0) ** 3  # noqa: E731
    n, m = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kid_matches_explicit_sums_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(13, 4, dtype=torch.float64, generator=g)
    b = torch.randn(9, 4, dtype=torch.float64, generator=g) + 0.3
    assert dg.kid(a, b) == pytest.approx(_kid_loops(a, b), rel=1e-10)
    assert dg.kid(a, b) == pytest.approx(dg.kid(b, a), rel=1e-12)


def test_kid_unbiased_where_frechet_is_not():
    """Two samples of one law: the KID averages to 0 within its Monte Carlo error, the Frechet distance does not."""
    g = torch.Generator().manual_seed(1)
    kids, fds = [], []
    for _ in range(200):
        a = torch.randn(40, 8, dtype=torch.float64, generator=g)
        b = torch.randn(40, 8, dtype=torch.float64, generator=g)
        kids.append(dg.kid(a, b))
        fds.append(float(dg.frechet_batched(*dg.gaussian_stats(a), *dg.gaussian_stats(b))))
    kids, fds = torch.tensor(kids), torch.tensor(fds)
    assert abs(float(kids.mean())) < 3 * float(kids.std()) / math.sqrt(len(kids))
    assert float(fds.mean()) > 10 * float(fds.std()) / math.sqrt(len(fds))
    # power: a shifted law gives a KID clearly above 0 at the same size
    shifted = [dg.kid(torch.randn(40, 8, dtype=torch.float64, generator=g),
                      torch.randn(40, 8, dtype=torch.float64, generator=g) + 0.5) for _ in range(50)]
    assert float(torch.tensor(shifted).mean()) > 5 * float(kids.std()) / math.sqrt(len(kids))


def test_kid_weighted_is_the_distinct_pair_statistic_of_a_resample():
    """With multinomial counts the weighted KID equals the U-statistic over the resampled multiset that skips pairs
    of copies of one original row (brute force over the expanded rows)."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(7, 3, dtype=torch.float64, generator=g)
    b = torch.randn(6, 3, dtype=torch.float64, generator=g)
    wa, wb = dg.multinomial_counts(1, 7, g), dg.multinomial_counts(1, 6, g)
    assert float(wa.sum()) == 7 and float(wb.sum()) == 6
    K = lambda x, y: (x @ y.T / 3 + 1.0) ** 3  # noqa: E731
    got = float(dg.kid_weighted(K(a, a), K(b, b), K(a, b), wa, wb)[0])
    ia = [i for i in range(7) for _ in range(int(wa[0, i]))]
    ib = [i for i in range(6) for _ in range(int(wb[0, i]))]

    def within(x, idx):
        vals = [float(K(x[i:i + 1], x[j:j + 1])) for p, i in enumerate(idx) for q, j in enumerate(idx)
                if p != q and i != j]
        return sum(vals) / len(vals)
    xy = sum(float(K(a[i:i + 1], b[j:j + 1])) for i in ia for j in ib) / (len(ia) * len(ib))
    assert got == pytest.approx(within(a, ia) + within(b, ib) - 2 * xy, rel=1e-10)
    ones = lambda n: torch.ones(1, n, dtype=torch.float64)  # noqa: E731
    assert float(dg.kid_weighted(K(a, a), K(b, b), K(a, b), ones(7), ones(6))[0]) == pytest.approx(dg.kid(a, b))


def _fake_scan(shift_b=0.0, R=3, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = []
    for _ in range(R):
        base = torch.randn(n, 5, dtype=torch.float64, generator=g)
        feats.append({("A", 1): base + 1.0, ("A", 2): base + 0.2, ("B", 1): base + 1.0 + shift_b,
                      ("B", 2): base + 0.2 + shift_b})
    return dg.Scan(["A", "B"], [1, 2], feats, {}, {}, {})


def test_paired_kid_differences_and_least_k():
    f_test = torch.randn(80, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    pk = dg.paired_kid(_fake_scan(0.0), f_test, n_boot=50, generator=torch.Generator().manual_seed(4))
    d, lo, hi = pk.diff(("A", 2), ("B", 2))                # identical samples: exactly no difference
    assert d == 0 and lo == 0 and hi == 0
    d, lo, hi = pk.diff(("A", 2), ("A", 1))                # a shift of 0.2 against 1.0: clearly better
    assert hi < 0 and lo < d < hi
    assert pk.value["A", 2] == pytest.approx(sum(dg.kid(f, f_test) for f in
                                                 [s[("A", 2)] for s in _fake_scan(0.0).feats]) / 3)
    K, (klo, khi) = pk.least_k("A", threshold=0.5 * (pk.value["A", 1] + pk.value["A", 2]))
    assert K == 2 and klo == 2 and khi == 2
    K, (klo, khi) = pk.least_k("A", threshold=-1.0)
    assert K is None and klo is None and khi is None
    # pairing: B shares A's rows, shifted; the paired interval is narrower than the unpaired one and resolves it
    pk2 = dg.paired_kid(_fake_scan(0.3), f_test, n_boot=50, generator=torch.Generator().manual_seed(4))
    d, lo, hi = pk2.diff(("A", 2), ("B", 2))
    assert hi < 0
    assert (hi - lo) / (2 * pk2.z) < math.hypot(pk2.se(("A", 2)), pk2.se(("B", 2)))


@pytest.mark.parametrize("call", [lambda: dg.kid(torch.zeros(1, 3), torch.zeros(4, 3)),
                                  lambda: dg.kid(torch.zeros(3, 2), torch.zeros(4, 3)),
                                  lambda: dg.kid(torch.full((3, 2), float("nan")), torch.zeros(4, 2)),
                                  lambda: dg.kid_bootstrap(torch.zeros(3, 2), torch.zeros(4, 2), n_boot=5),
                                  lambda: dg.paired_kid(_fake_scan(), torch.zeros(9, 5), n_boot=True)])
def test_kid_bad_input(call):
    with pytest.raises(ValueError):
        call()
