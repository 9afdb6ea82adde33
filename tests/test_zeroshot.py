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


# ---- inputs (issue 17): every bad value is a ValueError naming the parameter ------------------------------------
@pytest.mark.parametrize("method", ["ddnm", "bo"])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1", torch.tensor([0.1])])
def test_sigma_y_checked_for_every_method(method, bad):
    with pytest.raises(ValueError, match="sigma_y"):
        Z.zero_shot_score(PRIOR.score, H, Y, bad, method)


def test_sigma_y_accepts_real_numbers_and_0d_tensors():
    a = Z.bo_correction(H, Y, 0.3)(X, torch.tensor(-0.5))
    b = Z.bo_correction(H, Y, torch.tensor(0.3))(X, torch.tensor(-0.5))
    assert torch.equal(a, b)
    assert torch.equal(Z.bo_correction(H, Y, 1)(X, torch.tensor(-0.5)),
                       Z.bo_correction(H, Y, 1.0)(X, torch.tensor(-0.5)))
    import numpy as np
    assert torch.equal(Z.bo_correction(H, Y, np.float64(0.3))(X, torch.tensor(-0.5)), a)
    with pytest.raises(ValueError, match="sigma_y"):
        Z.bo_correction(H, Y, True)
    with pytest.raises(ValueError, match="sigma_y"):
        Z.bo_correction(H, Y, torch.tensor(True))
    with pytest.raises(ValueError, match="sigma_y"):
        Z.row_space_target(PRIOR, H, Y, float("inf"))


@pytest.mark.parametrize("method", ["ddnm", "bo"])
def test_nonfinite_H_or_y_rejected(method):
    Hn = H.clone()
    Hn[0, 1] = float("nan")
    with pytest.raises(ValueError, match="H"):
        Z.zero_shot_score(GAUSS.affine_score(), Hn, Y, 0.1, method)
    Hi = H.clone()
    Hi[1, 0] = float("inf")
    with pytest.raises(ValueError, match="H"):
        Z.zero_shot_score(GAUSS.affine_score(), Hi, Y, 0.1, method)
    with pytest.raises(ValueError, match="y"):
        Z.zero_shot_score(GAUSS.affine_score(), H, torch.tensor([0.0, float("nan")]), 0.1, method)
    with pytest.raises(ValueError, match="y"):
        Z.zero_shot_score(GAUSS.affine_score(), H, torch.tensor([float("-inf"), 0.0]), 0.1, method)


@pytest.mark.parametrize("method", ["ddnm", "bo"])
def test_H_columns_must_match_prior_dimension(method):
    H5 = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="H"):
        Z.zero_shot_score(GAUSS.affine_score(), H5, Y, 0.1, method)
    with pytest.raises(ValueError, match="H"):
        Z.zero_shot_score(PRIOR.score, H5, Y, 0.1, method)
    with pytest.raises(ValueError, match="H"):
        Z.row_space_target(PRIOR, H5, Y, 0.1)
    from diffnotes import nets
    with pytest.raises(ValueError, match="H"):
        Z.zero_shot_score(nets.NetScore(nets.EpsMLP(4, hidden=8, layers=1, seed=0)), H5, Y, 0.1, method)


def test_exact_law_and_sample_check_d_and_n():
    g = Z.zero_shot_score(GAUSS.affine_score(), H, Y, 0.2, "bo")
    sch = Z.paper_schedule(30)
    for bad in [3, 0, 4.0, True]:
        with pytest.raises(ValueError, match="d"):
            Z.exact_law(g, bad, sch)
        with pytest.raises(ValueError, match="d"):
            Z.sample(g, 10, bad, sch)
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="n"):
            Z.sample(g, bad, 4, sch)
    with pytest.raises(ValueError, match="stop"):
        Z.exact_law(g, 4, sch, stop=30)


def test_exact_law_at_t1_is_the_law_before_the_last_step():
    """``exact_law(stop=1)`` against running the sampler to t = 1."""
    g = Z.zero_shot_score(GAUSS.affine_score(), H, Y, 0.2, "ddnm")
    sch = Z.paper_schedule(30)
    L1 = Z.exact_law(g, 4, sch, stop=1)
    n = 50_000
    x1 = Z.sample(g, n, 4, sch, generator=torch.Generator().manual_seed(4), stop=1).x
    assert ((x1.mean(0) - L1.loc).abs() < 5 * (L1.cov.diagonal() / n).sqrt()).all()
    assert (torch.cov(x1.T) - L1.cov).abs().max() < 6 * (2 / n) ** 0.5 * L1.cov.diagonal().max()


def test_results_do_not_depend_on_device_argument_on_cpu():
    """device passes through: the same generator seed on the same device gives the same numbers whether device is
    given as a string or a torch.device; the mixture cells' ingredients follow the device."""
    sch = Z.paper_schedule(25)
    g = Z.zero_shot_score(PRIOR.score, H, Y, 0.3, "bo")
    a = Z.sample(g, 100, 4, sch, generator=torch.Generator().manual_seed(1)).x
    b = Z.sample(g, 100, 4, sch, generator=torch.Generator("cpu").manual_seed(1), device=torch.device("cpu")).x
    assert torch.equal(a, b)
    m1 = Z.random_mixture(4, 3, torch.Generator().manual_seed(2), ridge=0.05)
    m2 = Z.random_mixture(4, 3, torch.Generator().manual_seed(2), ridge=0.05, device="cpu")
    assert torch.equal(m1.means, m2.means) and torch.equal(m1.covs, m2.covs)
    assert Z.row_space_target(m2, H, Y, 0.3).device == m2.device


def test_bias_split_adds_up_against_monte_carlo_and_null_part_is_common():
    """Row + null = total; the row part against Monte Carlo of ||P Delta||^2; DDNM and BO share the null part."""
    sy = 0.3
    post = GAUSS.linear_posterior(H, Y, sy)
    post = Gaussian(post.means[0], post.covs[0])
    sch = Z.paper_schedule(30)
    bo = Z.zero_shot_score(GAUSS.affine_score(), H, Y, sy, "bo")
    dd = Z.zero_shot_score(GAUSS.affine_score(), H, Y, sy, "ddnm")
    row, null = Z.bias_split_gaussian(post, bo, sch, H)
    tot = Z.bias_terms_gaussian(post, bo, sch)
    assert torch.allclose(row + null, tot, rtol=1e-10)
    row_d, null_d = Z.bias_split_gaussian(post, dd, sch, H)
    assert torch.allclose(null_d, null, rtol=1e-10) and not torch.allclose(row_d, row, rtol=1e-3)
    _, P = Z.projectors(H)
    g = torch.Generator().manual_seed(8)
    t = 5
    lab = sch.log_alphabar[t]
    x = post.marginal(lab).sample(200_000, generator=g)
    r = 0.5 * sch.beta[t] * (((post.score(x, lab) - bo(x, lab)) @ P) ** 2).sum(-1)
    assert abs(float(r.mean() - row[t - 1])) < 5 * float(r.std()) / math.sqrt(r.numel())


def test_with_exact_part_replaces_one_part_only():
    sy = 0.2
    post = GAUSS.linear_posterior(H, Y, sy)
    post = Gaussian(post.means[0], post.covs[0])
    bo = Z.zero_shot_score(GAUSS.affine_score(), H, Y, sy, "bo")
    _, P = Z.projectors(H)
    Q = torch.eye(4) - P
    lab = torch.tensor(-0.4)
    ex = post.affine_score()
    r = Z.with_exact_part(bo, ex, H, "row")(X, lab)
    n = Z.with_exact_part(bo, ex, H, "null")(X, lab)
    assert torch.allclose(r @ P, ex(X, lab) @ P, atol=1e-10) and torch.allclose(r @ Q, bo(X, lab) @ Q, atol=1e-10)
    assert torch.allclose(n @ Q, ex(X, lab) @ Q, atol=1e-10) and torch.allclose(n @ P, bo(X, lab) @ P, atol=1e-10)
    with pytest.raises(ValueError, match="part"):
        Z.with_exact_part(bo, ex, H, "both")


def test_correction_ratio_is_the_relative_gap_between_bo_and_ddnm():
    """Along H's weakest right singular vector f* = f_DDNM / (1 + r_t): checked on the corrections themselves."""
    sy, sch = 0.05, Z.paper_schedule(30)
    r = Z.correction_ratio(H, sy, sch)
    _, S, Vh = torch.linalg.svd(H)
    v = Vh[-1] if S.numel() == Vh.shape[0] else Vh[S.numel() - 1]
    x = v[None] * 0.7
    for t in [1, 5, 30]:
        lab = sch.log_alphabar[t]
        fb = Z.bo_correction(H, torch.zeros(2), sy)(x, lab)
        fd = Z.ddnm_correction(H, torch.zeros(2))(x, lab)
        assert torch.allclose(fb, fd / (1 + r[t - 1]), rtol=1e-9, atol=1e-12)


def test_mismatch_floor_equals_full_computation():
    g = torch.Generator().manual_seed(6)
    A = torch.randn(5, 5, generator=g)
    B = torch.randn(5, 5, generator=g)
    tgt = Gaussian(torch.randn(5, generator=g), A @ A.T / 5 + 0.3 * torch.eye(5))
    trn = Gaussian(torch.randn(5, generator=g), B @ B.T / 5 + 0.3 * torch.eye(5))
    sch = Z.paper_schedule(40)
    full = metrics.kl_gaussian(tgt, Z.exact_law(trn.affine_score(), 5, sch))
    assert abs(float(Z.mismatch_floor(tgt, trn, sch)) - float(full)) < 1e-9 * max(1.0, float(full))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampler_on_cuda_matches_exact_law():
    """A GPU run is a GPU run: the mixture prior, H, y and the runs live on the device, with a CUDA generator
    (its stream differs from the CPU's, so the check is against the exact law, within Monte Carlo error)."""
    dev = torch.device("cuda")
    g = Z.zero_shot_score(GAUSS.to(dev).affine_score(), H.to(dev), Y.to(dev), 0.2, "bo")
    sch = Z.paper_schedule(30)
    n = 50_000
    x = Z.sample(g, n, 4, sch, generator=torch.Generator(dev).manual_seed(0)).x
    assert x.device.type == "cuda"
    L = Z.exact_law(Z.zero_shot_score(GAUSS.affine_score(), H, Y, 0.2, "bo"), 4, sch)
    assert ((x.mean(0).cpu() - L.loc).abs() < 5 * (L.cov.diagonal() / n).sqrt()).all()
    mix = Z.random_mixture(4, 3, torch.Generator().manual_seed(2), ridge=0.05, device=dev)
    assert mix.device.type == "cuda"
    terms, var = Z.bias_terms_mc(mix, mix.score, sch, 100, generator=torch.Generator(dev).manual_seed(1))
    assert float(terms.abs().max()) < 1e-12
