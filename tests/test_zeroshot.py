"""Zero-shot samplers of document 000 (DDNM, BO-DDNM) against independent references."""
import math

import pytest
import torch

from diffnotes import metrics, zeroshot as Z
from diffnotes.targets import DiagonalGaussian, Gaussian

torch.set_default_dtype(torch.float64)

GEN = torch.Generator().manual_seed(3)
PRIOR = Z.random_mixture(4, 3, GEN, ridge=0.05)
GAUSS = Gaussian(PRIOR.means[0], PRIOR.covs[0])
H = torch.randn(2, 4, generator=GEN)
Y = torch.randn(2, generator=GEN)
X = torch.randn(7, 4, generator=GEN)
LABS = [-1e-3, -0.3, -2.0]


@pytest.mark.parametrize("lab", LABS)
def test_bo_equals_ddnm_at_zero_noise(lab):
    a = Z.bo_correction(H, Y, 0.0)(X, torch.tensor(lab))
    b = Z.ddnm_correction(H, Y)(X, torch.tensor(lab))
    assert torch.allclose(a, b, atol=1e-10)
    # and they differ once sigma_y > 0
    c = Z.bo_correction(H, Y, 0.3)(X, torch.tensor(lab))
    assert (c - b).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["ddnm", "bo"])
def test_H_zero_reduces_to_unconditional(method):
    g = Z.zero_shot_score(PRIOR.score, torch.zeros(2, 4), torch.zeros(2), 0.5, method)
    for lab in LABS:
        assert torch.allclose(g(X, torch.tensor(lab)), PRIOR.score(X, torch.tensor(lab)), atol=1e-12)
    ga = Z.zero_shot_score(GAUSS.affine_score(), torch.zeros(2, 4), torch.zeros(2), 0.5, method)
    sch = Z.paper_schedule(40)
    la, lb = Z.exact_law(ga, 4, sch), Z.exact_law(GAUSS.affine_score(), 4, sch)
    assert torch.allclose(la.loc, lb.loc, atol=1e-12) and torch.allclose(la.cov, lb.cov, atol=1e-12)


@pytest.mark.parametrize("method,sy", [("ddnm", 0.0), ("bo", 0.2)])
def test_corrections_live_in_row_space_and_ddnm_matches_replacement(method, sy):
    """(I - P) f = 0; and DDNM's score equals the replacement x0 <- H^+ y + (I - P) x0_hat, coded directly."""
    Hp = torch.linalg.pinv(H)
    Q = torch.eye(4) - Hp @ H
    f = Z.ddnm_correction(H, Y) if method == "ddnm" else Z.bo_correction(H, Y, sy)
    lab = torch.tensor(-0.7)
    assert (f(X, lab) @ Q).abs().max() < 1e-10
    ab = math.exp(-0.7)
    s = PRIOR.score(X, lab)
    x0 = (X + (1 - ab) * s) / math.sqrt(ab)
    x0 = Hp @ Y + x0 @ Q
    g_rep = (math.sqrt(ab) * x0 - X) / (1 - ab)
    g = Z.zero_shot_score(PRIOR.score, H, Y, 0.0, "ddnm")(X, lab)
    assert torch.allclose(g, g_rep, atol=1e-9)


def test_bo_is_row_space_score_of_measurement_model_but_not_of_posterior():
    """Theorem 3 in the sense that holds: P grad log q_t = f* exactly for the flat-row-space model; for the
    Bayesian posterior it does not (sigma_y > 0)."""
    sy = 0.3
    Hp = torch.linalg.pinv(H)
    P = Hp @ H
    model = Z.row_space_target(PRIOR, H, Y, sy)
    post = PRIOR.linear_posterior(H, Y, sy)
    f = Z.bo_correction(H, Y, sy)
    for lab in LABS:
        lab = torch.tensor(lab)
        assert (model.score(X, lab) @ P - f(X, lab)).abs().max() < 1e-8
        assert (post.score(X, lab) @ P - f(X, lab)).abs().max() > 1e-2


def test_exact_posterior_against_importance_sampling():
    sy = 0.4
    post = PRIOR.linear_posterior(H, Y, sy)
    g = torch.Generator().manual_seed(11)
    x = PRIOR.sample(400_000, generator=g)
    logw = -0.5 * ((x @ H.T - Y) ** 2).sum(-1) / sy ** 2
    w = torch.softmax(logw, 0)
    m = (w[:, None] * x).sum(0)
    ess = 1 / (w ** 2).sum()
    sd = post.covariance().diagonal().sqrt()
    assert ((m - post.mean()).abs() < 6 * sd / ess.sqrt()).all()
    C = (w[:, None, None] * (x - m)[:, :, None] * (x - m)[:, None, :]).sum(0)
    assert (C - post.covariance()).abs().max() < 8 * sd.max() ** 2 / ess.sqrt()


def test_exact_law_against_running_the_sampler():
    sy = 0.2
    g = Z.zero_shot_score(GAUSS.affine_score(), H, Y, sy, "bo")
    sch = Z.paper_schedule(30)
    L = Z.exact_law(g, 4, sch)
    gen = torch.Generator().manual_seed(5)
    n = 100_000
    x = Z.sample(g, n, 4, sch, generator=gen)
    assert x.nfe == 30
    se = (L.cov.diagonal() / n).sqrt()
    assert ((x.x.mean(0) - L.loc).abs() < 5 * se).all()
    assert (torch.cov(x.x.T) - L.cov).abs().max() < 6 * (2 / n) ** 0.5 * L.cov.diagonal().max()
    # without the final noise: the law of the last mean
    L0 = Z.exact_law(g, 4, sch, final_noise=False)
    x1 = Z.sample(g, n, 4, sch, generator=gen, stop=1).x
    lab1 = sch.log_alphabar[1]
    m1 = (x1 + sch.beta[1] * g(x1, lab1)) / sch.alpha[1].sqrt()
    assert ((m1.mean(0) - L0.loc).abs() < 5 * (L0.cov.diagonal() / n).sqrt()).all()


def test_bias_terms_closed_form_against_monte_carlo_and_de_bruijn():
    """Closed form vs Monte Carlo; and sum_t (1 - alpha_t)/2 FD_t -> KL(target || training) (de Bruijn)."""
    tgt = DiagonalGaussian(torch.tensor([0.5, -1.0, 0.0]), torch.tensor([0.5, 2.0, 1.0]))
    trn = DiagonalGaussian(torch.zeros(3), torch.ones(3))
    sch = Z.paper_schedule(200)
    exact = Z.bias_terms_gaussian(tgt, trn.affine_score(), sch)
    full = Gaussian(tgt.loc, torch.diag(tgt.var))
    mc, var = Z.bias_terms_mc(full, trn.score, sch, 2000, generator=torch.Generator().manual_seed(1))
    assert abs(float(mc.sum() - exact.sum())) < 5 * float(var.sum().sqrt())
    kl = float(metrics.kl_gaussian(tgt, trn))
    fine = Z.bias_terms_gaussian(tgt, trn.affine_score(), Z.paper_schedule(5000)).sum()
    assert abs(float(fine) / kl - 1) < 0.02
    assert abs(float(exact.sum()) / kl - 1) > abs(float(fine) / kl - 1)


def test_schedule_and_bad_input():
    sch = Z.paper_schedule(100)
    assert abs(float(sch.beta[1]) - 1e-3) < 1e-15
    assert float(sch.alphabar[sch.T]) < 1e-3
    with pytest.raises(ValueError, match="T"):
        Z.paper_schedule(1)
    with pytest.raises(ValueError, match="method"):
        Z.zero_shot_score(PRIOR.score, H, Y, 0.1, "dps")
    with pytest.raises(ValueError, match="sigma_y"):
        Z.bo_correction(H, Y, -1.0)
    with pytest.raises(ValueError, match="y"):
        Z.ddnm_correction(H, torch.zeros(3))


def test_kernel_kl_estimator_on_gaussian():
    """The last-kernel KL estimator against the exact Gaussian KL (it is biased high: check within its shift)."""
    tgt = GAUSS.linear_posterior(H, Y, 0.5)
    tgt = Gaussian(tgt.means[0], tgt.covs[0])
    g = Z.zero_shot_score(GAUSS.affine_score(), H, Y, 0.5, "bo")
    sch = Z.paper_schedule(30)
    exact = float(metrics.kl_gaussian(tgt, Z.exact_law(g, 4, sch)))
    kl, se, shift = Z.kl_to_sampler_mc(tgt, g, sch, n_sampler=20000, n_eval=1000,
                                       generator=torch.Generator().manual_seed(2))
    assert float(kl) - 4 * float(se) - 2 * abs(float(shift)) < exact < float(kl) + 4 * float(se)


def test_sample_last_kernel_matches_exact_law_and_last_kernel_kl():
    sy = 0.3
    g = Z.zero_shot_score(GAUSS.affine_score(), H, Y, sy, "ddnm")
    sch = Z.paper_schedule(25)
    gen = torch.Generator().manual_seed(11)
    x0, m1, v1, nfe = Z.sample_last_kernel(g, 20000, 4, sch, generator=gen)
    assert nfe == 25 and v1 == pytest.approx(float(sch.beta[1] / sch.alpha[1]))
    L = Z.exact_law(g, 4, sch)
    assert ((x0.mean(0) - L.loc).abs() < 5 * (L.cov.diagonal() / 20000).sqrt()).all()
    assert (torch.cov(x0.T) - L.cov).abs().max() < 6 * (2 / 20000) ** 0.5 * L.cov.diagonal().max()
    # DDNM's output is much narrower than the posterior in the row space: the exact last kernel is then reliable
    tgt = GAUSS.linear_posterior(H, Y, sy)
    tgt = Gaussian(tgt.means[0], tgt.covs[0])
    exact = float(metrics.kl_gaussian(tgt, L))
    kl, se, shift = Z.kl_last_kernel(tgt, m1, v1, 2000, generator=gen)
    assert float(kl) - 4 * float(se) - 2 * abs(float(shift)) < exact < float(kl) + 4 * float(se)
    # and the kNN estimate of the other direction on the same runs
    est, se_k, _ = metrics.kl_knn(x0[:4000], tgt.log_prob)
    assert abs(float(est) - float(metrics.kl_gaussian(L, tgt))) < 4 * float(se_k) + 0.05 + 0.05 * float(est)


def test_paper_mixture_is_their_seed_100_draw():
    m = Z.paper_mixture()
    assert m.means.shape == (4, 4) and m.covs.shape == (4, 4, 4)
    assert (m.means.abs() <= 1).all() and torch.allclose(m.weights, torch.full((4,), 0.25))
    # numpy.random.seed(100); rand(4, 4) starts 0.5434..., so the first mean coordinate is 2 (0.5434 - 0.5)
    assert float(m.means[0, 0]) == pytest.approx(2 * (0.5434049417909654 - 0.5), abs=1e-12)
    assert float(torch.linalg.eigvalsh(m.covs[0]).min()) > 1e-3     # no eigenvalue below the last step's variance
