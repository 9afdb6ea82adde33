"""Tests of diffnotes.conditional against closed forms and Monte Carlo with error bars."""
import math

import pytest
import torch

from diffnotes import conditional as C
from diffnotes import schedules, targets


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _mix():
    w = [0.6, 0.3, 0.1]
    m = [[-2.5, 0.8], [0.0, 0.0], [2.5, -0.6]]
    covs = [[[0.3, 0.1], [0.1, 0.25]], [[0.3, -0.1], [-0.1, 0.25]], [[0.3, 0.0], [0.0, 0.2]]]
    return targets.GaussianMixture(w, m, covs)


@pytest.mark.parametrize("name", ["multinomial", "systematic"])
def test_resampling_unbiased(name):
    g = torch.Generator().manual_seed(0)
    logw = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]], dtype=torch.float64)).expand(20000, 4)
    idx = C.RESAMPLERS[name](logw, g)
    counts = torch.nn.functional.one_hot(idx, 4).sum(1).double()      # (runs, 4)
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(counts.shape[0]) + 1e-3
    assert ((mean - 4 * torch.tensor([0.05, 0.5, 0.15, 0.3])).abs() < 5 * se).all()
    if name == "systematic":      # counts are floor or ceil of n W_k
        assert ((counts - 4 * torch.tensor([0.05, 0.5, 0.15, 0.3])).abs() < 1 + 1e-12).all()


def test_resampling_rejects_bad_weights():
    with pytest.raises(ValueError):
        C.resample_systematic(torch.full((2, 3), float("nan")))


def test_condition_rows_matches_mixture_condition():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    y = torch.tensor([[-0.3]], dtype=torch.float64)
    log_py, lw, mx, Cx = C._condition_rows(mix.log_weights[None], mix.means[None], mix.covs, P.ix, P.iy, y)
    ref = P.exact(-0.3)
    assert torch.allclose(torch.exp(lw[0]), ref.weights, atol=1e-12)
    assert torch.allclose(mx[0], ref.means, atol=1e-12)
    assert torch.allclose(Cx, ref.covs, atol=1e-12)
    assert torch.allclose(log_py, C.marginal(mix, [1]).log_prob(y), atol=1e-12)


def test_em_kernel_weight_is_gaussian_density():
    """The SMCDiff weight with the corrected EM kernel is N(Y_s; [Z + e (Z + 2 s)]_Y, 2 e)."""
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.1, 4.0)
    x = torch.randn(2, 3, 1, dtype=torch.float64)
    yt, ys = torch.tensor([[0.2], [0.1]]).double(), torch.tensor([[0.0], [0.3]]).double()
    log_w, _ = C._x_step(P, "em", mix.score, sch, 5, x, yt, ys, True)
    z = P.join(x, yt[:, None, :]).reshape(6, 2)
    mean = z + 0.1 * (z + 2 * mix.score(z, sch.lab(5)))
    ref = torch.distributions.Normal(mean[:, 1], math.sqrt(0.2)).log_prob(ys.repeat_interleave(3, 0)[:, 0])
    assert torch.allclose(log_w.reshape(-1), ref, atol=1e-12)


def test_smcdiff_likelihood_unbiased_and_exact_kernel_consistent():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.25, 4.0)
    g = torch.Generator().manual_seed(3)
    out = C.smcdiff(P, -0.3, sch, runs=2000, n=32, generator=g)
    exact = C.context_log_likelihood(P, out.context, sch)
    ratio = torch.exp(out.log_z - exact)
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(2000)
    est = C.weighted_mean(out)[:, 0]
    err = est - P.exact(-0.3).mean()[0]
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(2000) + 0.02


def test_replacement_is_biased():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.1, 4.0)
    out = C.replacement(P, -0.3, sch, runs=5000, n=1, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (5000, 1, 1) and out.nfe == sch.T
    wts = C.mode_weights(out.x, P.exact(-0.3))
    assert abs(float(wts[1]) - float(P.exact(-0.3).weights[1])) > 0.1


def test_mala_targets_conditional_at_t0():
    """Unimodal target (fast mixing): with L large MALA reaches p_0(X|Y0) (mean and variance match)."""
    mix = targets.Gaussian(torch.tensor([1.0, 0.5]), torch.tensor([[0.5, 0.3], [0.3, 0.6]]))
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    out = C.langevin_replacement(P, -0.3, sch, runs=4000, n=1, langevin_steps=30, step=0.1, corrector="mala",
                                 log_prob=mix.log_prob, generator=torch.Generator().manual_seed(1))
    x = out.x[:, 0, 0]
    ex = P.exact(-0.3)
    assert abs(float(x.mean()) - float(ex.mean()[0])) < 4 * float(x.std()) / math.sqrt(4000)
    assert abs(float(x.var()) / float(ex.covariance()[0, 0]) - 1) < 0.1
    assert 0.3 < out.accept <= 1


def test_tds_likelihood_unbiased():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.25, 4.0)
    out = C.tds(P, -0.3, sch, runs=1000, n=16, sigma_y=0.2, generator=torch.Generator().manual_seed(2))
    _, log_py = C.tds_exact(P, -0.3, 0.2)
    ratio = torch.exp(out.log_z - log_py)
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(1000)


def test_bad_inputs():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    with pytest.raises(ValueError, match="kernel"):
        C.smcdiff(P, 0.0, sch, runs=2, n=2, kernel="bad")
    with pytest.raises(ValueError, match="runs"):
        C.smcdiff(P, 0.0, sch, runs=0, n=2)
    with pytest.raises(ValueError, match="idx_y"):
        C.Inpainting(mix, [0, 1])


def test_retain_one_is_a_uniform_particle():
    """Pooled retained particles match the pooled particle cloud; particle 0 after systematic resampling does not."""
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.25, 4.0)
    out = C.smcdiff(P, -0.3, sch, runs=2000, n=16, generator=torch.Generator().manual_seed(4))
    one = C.retain_one(out, torch.Generator().manual_seed(5))[:, 0]
    allp = out.x.reshape(-1)
    assert abs(float(one.mean() - allp.mean())) < 4 * float(allp.std()) / math.sqrt(2000)


def test_ula_fixed_step_bias_matches_gaussian_closed_form():
    """Started at the target, ULA with a linear score drifts to variance s^2 / (1 - step / (2 s^2)); MALA keeps s^2."""
    mix = targets.Gaussian(torch.tensor([1.0, 0.5]), torch.tensor([[0.5, 0.3], [0.3, 0.6]]))
    P = C.Inpainting(mix, [1])
    ex = P.exact(-0.3)
    s2, step, n = float(ex.covariance()[0, 0]), 0.2, 4000
    x0 = ex.sample(n, generator=torch.Generator().manual_seed(6)).reshape(n, 1, 1)
    tol = 4 * math.sqrt(2 / n)
    ula = C.langevin_fixed(P, x0, -0.3, 0.0, steps=60, step=step, generator=torch.Generator().manual_seed(7))
    assert ula.nfe == 60 and ula.accept is None
    assert abs(float(ula.x.var()) / (s2 / (1 - step / (2 * s2))) - 1) < tol
    mala = C.langevin_fixed(P, x0, -0.3, 0.0, steps=60, step=step, corrector="mala", log_prob=mix.log_prob,
                            generator=torch.Generator().manual_seed(7))
    assert abs(float(mala.x.var()) / s2 - 1) < tol and 0.5 < mala.accept <= 1
    with pytest.raises(ValueError, match="log_prob"):
        C.langevin_fixed(P, x0, -0.3, 0.0, steps=1, step=step, corrector="mala")
    with pytest.raises(ValueError, match="x must"):
        C.langevin_fixed(P, x0[:, 0], -0.3, 0.0, steps=1, step=step)


def test_langevin_stop_skips_the_corrector_below_it():
    """langevin_stop = T is plain replacement (same draws); stop = 1 never calls the score at t = 0 and counts NFE."""
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    g = lambda: torch.Generator().manual_seed(8)
    rep = C.replacement(P, -0.3, sch, runs=50, n=2, generator=g())
    same = C.langevin_replacement(P, -0.3, sch, runs=50, n=2, langevin_steps=3, langevin_stop=sch.T, generator=g())
    assert torch.equal(rep.x, same.x) and same.nfe == sch.T

    def score_no_t0(z, lab):
        if float(lab) == 0.0:
            raise AssertionError("score called at t = 0")
        return mix.score(z, lab)
    out = C.langevin_replacement(P, -0.3, sch, runs=50, n=2, kernel="em", score=score_no_t0, langevin_steps=3,
                                 langevin_stop=1, generator=g())
    assert out.nfe == sch.T + 3 * (sch.T - 1) and torch.isfinite(out.x).all()
    with pytest.raises(ValueError, match="langevin_stop"):
        C.langevin_replacement(P, -0.3, sch, runs=2, n=1, langevin_stop=sch.T + 1)


# ---- the discretised (Euler-Maruyama) model's exact conditional --------------------------------------------------
def _em_gaussian_joint(gauss, sch, path, ix, iy):
    """Closed form, independent of the grid filter: for a Gaussian target every corrected EM step
    ``Z_s = A Z_t + b + sqrt(2 eps) W`` is affine (``A = (1 + eps) I - 2 eps S_t^{-1}``, ``b = 2 eps S_t^{-1} m_t``), so
    ``Z_T ~ q_T`` and the EM chain make ``(Z_T, ..., Z_0)`` jointly Gaussian: write every ``Z_i = M_i xi + c_i`` in the
    standard normal ``xi`` of all the draws, then condition ``X_0`` on ``Y_{0:T} = path`` (Schur complement).
    Returns the conditional mean and variance of X_0 and ``log p(Y_{0:T-1} | Y_T)``."""
    d, T = gauss.d, sch.T
    D = d * (T + 1)
    lab = lambda i: sch.lab(i)
    mean_t = lambda i: torch.exp(0.5 * lab(i)) * gauss.loc
    cov_t = lambda i: torch.exp(lab(i)) * gauss.cov - torch.expm1(lab(i)) * torch.eye(d, dtype=torch.float64)
    M = torch.zeros(d, D, dtype=torch.float64)
    M[:, :d] = torch.linalg.cholesky(cov_t(T))
    c = mean_t(T).clone()
    rows_M, rows_c = {T: M}, {T: c}
    for i in range(T, 0, -1):
        e = float(-0.5 * sch.log_alpha[i])
        Pi = torch.linalg.inv(cov_t(i))
        A = (1 + e) * torch.eye(d, dtype=torch.float64) - 2 * e * Pi
        b = 2 * e * Pi @ mean_t(i)
        M = A @ M
        M[:, d * (T - i + 1):d * (T - i + 2)] += math.sqrt(2 * e) * torch.eye(d, dtype=torch.float64)
        c = A @ c + b
        rows_M[i - 1], rows_c[i - 1] = M, c
    My = torch.cat([rows_M[i][iy] for i in range(T + 1)])         # Y_0, ..., Y_T
    cy = torch.cat([rows_c[i][iy] for i in range(T + 1)])
    Mx, cx = rows_M[0][ix], rows_c[0][ix]
    Syy, Sxy, Sxx = My @ My.T, Mx @ My.T, Mx @ Mx.T
    y = path.reshape(-1)
    K = Sxy @ torch.linalg.inv(Syy)
    m_post = cx + K @ (y - cy)
    v_post = Sxx - K @ Sxy.T
    mvn = torch.distributions.MultivariateNormal
    log_all = mvn(cy, Syy).log_prob(y)
    log_T = mvn(cy[-1:], Syy[-1:, -1:]).log_prob(y[-1:])
    return float(m_post[0]), float(v_post[0, 0]), float(log_all - log_T)


def test_em_conditional_grid_matches_gaussian_closed_form():
    gauss = targets.Gaussian(torch.tensor([1.0, 0.5]), torch.tensor([[0.5, 0.3], [0.3, 0.6]]))
    P = C.Inpainting(gauss, [1])
    sch = schedules.ou(0.5, 4.0)
    paths = C.context_path(P, -0.3, sch, 3, generator=torch.Generator().manual_seed(9))
    gc = C.em_conditional_grid(P, paths, sch)
    for p in range(3):
        m, v, ll = _em_gaussian_joint(gauss, sch, paths[p], P.ix, P.iy)
        assert abs(float(gc.mean()[p]) - m) < 1e-8
        assert abs(float(gc.mean(lambda x: x ** 2)[p]) - (v + m * m)) < 1e-8
        assert abs(float(gc.log_lik[p]) - ll) < 1e-8
    # the discretised model's conditional is not the true one (EM bias at eps = 0.5)
    assert abs(float(gc.mean()[0]) - float(P.exact(-0.3).mean()[0])) > 0.01


def test_smcdiff_em_targets_the_discretised_model():
    """With the EM kernel, SMCDiff is a bootstrap filter for the discretised model: Zhat is unbiased for the grid's
    likelihood and the unbiased unnormalised estimate Zhat * mean_k X_0^k matches Z * E_em[X_0 | path] (any N), while
    the true conditional mean is many standard errors away."""
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.25, 4.0)
    path = C.context_path(P, -0.3, sch, 1, generator=torch.Generator().manual_seed(10))[0]
    gc = C.em_conditional_grid(P, path, sch)
    R = 2000
    out = C.smcdiff(P, -0.3, sch, runs=R, n=16, kernel="em", score=mix.score, path=path,
                    generator=torch.Generator().manual_seed(11))
    assert torch.equal(out.context[0], path) and torch.equal(out.context[-1], path)
    r = torch.exp(out.log_z - gc.log_lik[0])
    assert abs(float(r.mean()) - 1) < 4 * float(r.std()) / math.sqrt(R)
    m = C.weighted_mean(out)[:, 0]
    m_em = float(gc.mean()[0])
    u = r * (m - m_em)                       # E[u] = 0 exactly for the discretised model's conditional mean
    se = float(u.std()) / math.sqrt(R)
    assert abs(float(u.mean())) < 4 * se
    m_q = float(P.exact(-0.3).mean()[0])
    assert abs(float((r * (m - m_q)).mean())) > 10 * se


def test_em_conditional_grid_bad_inputs():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    path = C.context_path(P, -0.3, sch, 1, kind="fixed")
    with pytest.raises(ValueError, match="grid"):
        C.em_conditional_grid(P, path, sch, grid=torch.linspace(-8, 8, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="path"):
        C.em_conditional_grid(P, path[:, :-1], sch)
    with pytest.raises(ValueError, match="path"):
        C.smcdiff(P, -0.3, sch, runs=3, n=2, path=path.expand(2, -1, -1))
    P3 = C.Inpainting(targets.GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [torch.eye(3).tolist()]), [2])
    with pytest.raises(ValueError, match="dx"):
        C.em_conditional_grid(P3, torch.zeros(sch.T + 1, 1, dtype=torch.float64), sch)


def test_tds_em_kernel_targets_the_discretised_model():
    """Gaussian target: the EM model's Z_0 is Gaussian (affine steps), so p_em(y) and E_em[X_0 | y] are closed form.
    TDS with kernel="em": Zhat unbiased for p_em(y) and Zhat * (weighted mean) for p_em(y) E_em[X_0 | y]."""
    gauss = targets.Gaussian(torch.tensor([1.0, 0.5]), torch.tensor([[0.5, 0.3], [0.3, 0.6]]))
    P = C.Inpainting(gauss, [1])
    sch = schedules.ou(0.5, 4.0)
    d, T, s_y, y = 2, sch.T, 0.3, -0.3
    cov_t = lambda i: torch.exp(sch.lab(i)) * gauss.cov - torch.expm1(sch.lab(i)) * torch.eye(d, dtype=torch.float64)
    c, S = torch.exp(0.5 * sch.lab(T)) * gauss.loc, cov_t(T)
    for i in range(T, 0, -1):                       # push the Gaussian law of Z through the affine EM steps
        e = float(-0.5 * sch.log_alpha[i])
        Pi = torch.linalg.inv(cov_t(i))
        A = (1 + e) * torch.eye(d, dtype=torch.float64) - 2 * e * Pi
        c = A @ c + 2 * e * Pi @ (torch.exp(0.5 * sch.lab(i)) * gauss.loc)
        S = A @ S @ A.T + 2 * e * torch.eye(d, dtype=torch.float64)
    vy = float(S[1, 1]) + s_y ** 2
    log_py = -0.5 * ((y - float(c[1])) ** 2 / vy + math.log(2 * math.pi * vy))
    m_em = float(c[0]) + float(S[0, 1]) / vy * (y - float(c[1]))
    R = 2000
    out = C.tds(P, y, sch, runs=R, n=8, sigma_y=s_y, kernel="em", score=gauss.score,
                generator=torch.Generator().manual_seed(12))
    assert out.nfe == 3 * T
    r = torch.exp(out.log_z - log_py)
    assert abs(float(r.mean()) - 1) < 4 * float(r.std()) / math.sqrt(R)
    u = r * (C.weighted_mean(out)[:, 0] - m_em)
    assert abs(float(u.mean())) < 4 * float(u.std()) / math.sqrt(R)
    m_q = float(C.tds_exact(P, y, s_y)[0].mean()[0])
    assert abs(m_em - m_q) > 0.05                   # the discretised model differs from q at eps = 0.5
    with pytest.raises(ValueError, match="score"):
        C.tds(P, y, sch, runs=2, n=2, kernel="em")


# ---- input checks (issue 16): each raises a ValueError naming the input -----------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_observation_is_rejected(bad):
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    for f in (C.replacement, C.smcdiff, C.langevin_replacement):
        with pytest.raises(ValueError, match="y0"):
            f(P, bad, sch, runs=2, n=2)
    for f in (C.tds, C.reconstruction_guidance):
        with pytest.raises(ValueError, match="'y'|y must"):
            f(P, bad, sch, runs=2, n=2)
    with pytest.raises(ValueError, match="'y'|y must"):
        C.tds_exact(P, bad, 0.1)
    with pytest.raises(ValueError, match="y0"):
        P.exact(bad)
    with pytest.raises(ValueError, match="y0"):
        C.context_path(P, bad, sch, 2)


def test_inpainting_rejects_non_integer_coordinates():
    mix = _mix()
    for bad in ([0.5], [1.0], [True], "1"):
        with pytest.raises(ValueError, match="idx_y"):
            C.Inpainting(mix, bad)
    P = C.Inpainting(mix, [torch.tensor(1)])          # integer tensors and numpy integers are coordinates
    assert P.iy.tolist() == [1]
    np = pytest.importorskip("numpy")
    assert C.Inpainting(mix, np.array([1])).iy.tolist() == [1]


def test_mode_weights_checks_its_input():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    ex = P.exact(-0.3)
    x = ex.sample(10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(C.mode_weights(x.reshape(5, 2, 1), ex), C.mode_weights(x, ex))
    with pytest.raises(ValueError, match="x"):
        C.mode_weights(torch.zeros(5, 2, dtype=torch.float64), ex)     # Z = [X, Y], not X
    with pytest.raises(ValueError, match="x"):
        C.mode_weights(x.float(), ex)
    with pytest.raises(ValueError, match="x"):
        C.mode_weights(torch.full((3, 1), float("nan"), dtype=torch.float64), ex)


def test_w1_1d_checks_its_input_and_is_right():
    mix = _mix()
    ex = C.Inpainting(mix, [1]).exact(-0.3)
    with pytest.raises(ValueError, match="x"):
        C.w1_1d(torch.tensor([0.0, float("nan")], dtype=torch.float64), ex)
    with pytest.raises(ValueError, match="x"):
        C.w1_1d(torch.zeros(0, dtype=torch.float64), ex)
    with pytest.raises(ValueError, match="x"):
        C.w1_1d(torch.zeros(3, dtype=torch.float32), ex)
    # W1 of a point mass at c to N(0, 1) is E|Z - c| = 2 phi(c) + c (2 Phi(c) - 1)
    g = targets.GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    c = 0.7
    ref = 2 * math.exp(-c * c / 2) / math.sqrt(2 * math.pi) + c * math.erf(c / math.sqrt(2))
    # (the empirical CDF jumps by 1 inside one cell of the default grid: error <= its spacing, 16 / 4000)
    assert abs(C.w1_1d(torch.full((5,), c, dtype=torch.float64), g) - ref) < 16 / 4000


def test_smcdiff_rejects_a_path_that_does_not_start_at_y0():
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    path = C.context_path(P, -0.3, sch, 1, generator=torch.Generator().manual_seed(0))[0]
    C.smcdiff(P, -0.3, sch, runs=2, n=2, path=path)                     # consistent: fine
    with pytest.raises(ValueError, match="path"):
        C.smcdiff(P, 0.4, sch, runs=2, n=2, path=path)


def test_numpy_integer_counts_are_accepted():
    np = pytest.importorskip("numpy")
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    g = lambda: torch.Generator().manual_seed(1)
    a = C.smcdiff(P, -0.3, sch, runs=np.int64(3), n=np.int32(4), generator=g())
    b = C.smcdiff(P, -0.3, sch, runs=3, n=4, generator=g())
    assert torch.equal(a.x, b.x)
    out = C.langevin_replacement(P, -0.3, sch, runs=np.int64(2), n=1, langevin_steps=np.int64(2), generator=g())
    assert out.nfe == sch.T + 2 * sch.T and isinstance(out.nfe, int)
    for bad in (True, 2.0, np.float64(2.0)):
        with pytest.raises(ValueError, match="runs"):
            C.smcdiff(P, -0.3, sch, runs=bad, n=2)


# ---- adaptive resampling and the MALA step rule --------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["multinomial", "systematic"])
def test_adaptive_resampling_keeps_smcdiff_and_tds_unbiased(scheme):
    """With an ESS threshold the runs carry weights between resamplings: Zhat stays unbiased for the context-path
    likelihood (SMCDiff) and for p(y) (TDS), and the weighted estimate of E[X_0 | Y_0] stays consistent."""
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.25, 4.0)
    R = 2000
    out = C.smcdiff(P, -0.3, sch, runs=R, n=16, resampling=scheme, ess_threshold=0.5,
                    generator=torch.Generator().manual_seed(13))
    assert out.log_w is not None and torch.allclose(torch.logsumexp(out.log_w, -1), out.log_w.new_zeros(R))
    assert (out.ess >= 1 - 1e-9).all() and (out.ess <= 16 + 1e-9).all()
    ratio = torch.exp(out.log_z - C.context_log_likelihood(P, out.context, sch))
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(R)
    u = ratio * (C.weighted_mean(out)[:, 0] - P.exact(-0.3).mean()[0])     # E[Zhat (m_hat - m)] = 0 at any N
    assert abs(float(u.mean())) < 4 * float(u.std()) / math.sqrt(R)
    t = C.tds(P, -0.3, sch, runs=1000, n=16, sigma_y=0.2, resampling=scheme, ess_threshold=0.5,
              generator=torch.Generator().manual_seed(14))
    r = torch.exp(t.log_z - C.tds_exact(P, -0.3, 0.2)[1])
    assert abs(float(r.mean()) - 1) < 4 * float(r.std()) / math.sqrt(1000)


def test_adaptive_resampling_threshold_one_resamples_like_every_step():
    """Threshold 1 resamples every run whose weights are not exactly equal: the same draws as resampling always."""
    mix = _mix()
    P = C.Inpainting(mix, [1])
    sch = schedules.ou(0.5, 4.0)
    g = lambda: torch.Generator().manual_seed(15)
    a = C.smcdiff(P, -0.3, sch, runs=20, n=8, generator=g())
    b = C.smcdiff(P, -0.3, sch, runs=20, n=8, ess_threshold=1.0, generator=g())
    assert torch.equal(a.x, b.x) and torch.allclose(a.log_z, b.log_z, atol=1e-12)
    for bad in (0.0, 1.5, True, "half"):
        with pytest.raises(ValueError, match="ess_threshold"):
            C.smcdiff(P, -0.3, sch, runs=2, n=2, ess_threshold=bad)


def test_mala_steps_hits_its_target_acceptance():
    """The step rule: per level, the step whose pilot acceptance is the target; a per-level step sequence is then
    used level by level (its MALA acceptance in the sampler is near the target too)."""
    gauss = targets.Gaussian(torch.tensor([1.0, 0.5]), torch.tensor([[0.5, 0.3], [0.3, 0.6]]))
    P = C.Inpainting(gauss, [1])
    sch = schedules.ou(0.5, 4.0)
    steps, acc = C.mala_steps(P, -0.3, sch, gauss.log_prob, target=0.6, chains=2000,
                              generator=torch.Generator().manual_seed(16))
    assert steps.shape == (sch.T + 1,) and (steps > 0).all()
    assert ((acc - 0.6).abs() < 0.05).all()
    out = C.langevin_replacement(P, -0.3, sch, runs=2000, n=1, langevin_steps=10, step=steps, corrector="mala",
                                 log_prob=gauss.log_prob, generator=torch.Generator().manual_seed(17))
    assert abs(out.accept - 0.6) < 0.05
    with pytest.raises(ValueError, match="step"):
        C.langevin_replacement(P, -0.3, sch, runs=2, n=1, step=steps[:-1])
    with pytest.raises(ValueError, match="step"):
        C.langevin_replacement(P, -0.3, sch, runs=2, n=1, step=-0.1)
    with pytest.raises(ValueError, match="target"):
        C.mala_steps(P, -0.3, sch, gauss.log_prob, target=1.2)
