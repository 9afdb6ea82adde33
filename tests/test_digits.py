"""The 8x8 digits experiment (chapter 06): data split, classifier features, Frechet distance and its bootstrap
interval, the cost factor."""
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
