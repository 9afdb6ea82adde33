"""Exact, fast checks written for the mutation score (book/contributing.md): each kills mutants that the statistical
tests (Monte Carlo against the exact law, seconds each) let through or catch only slowly.

The law of every sampler under an affine score is checked against the sampler itself *to rounding*: the sampler's
output is ``Y = M x + c + sum_j G_j z_j`` (an affine map of the start ``x`` and of its normal draws ``z_j``); with the
package's noise source replaced by unit vectors, one batched run reads off ``c``, the columns of ``M`` and every
``G_j e_k``, hence the exact mean ``M m + c`` and covariance ``M C M^T + sum_j G_j G_j^T`` of the output for
``x ~ N(m, C)``, which :func:`diffnotes.laws.law` must reproduce.
"""
import math

import pytest
import torch

from diffnotes import laws, samplers as S, schedules, targets

F64 = torch.float64
CASES = [(S.ddpm, {"variance": "beta"}), (S.ddpm, {"variance": "beta_tilde"}),
         (S.ddpm, {"variance": "beta_over_alpha"}), (S.ddim, {"eta": 0.0}), (S.ddim, {"eta": 0.6}),
         (S.flow_ode, {}), (S.accel_ode, {}), (S.accel_sde, {})]


class UnitNoise:
    """Stands in for ``samplers._noise``: call ``j`` returns zeros except a 1 at ``(row, k)`` for each probe row
    assigned to ``(j, k)``."""

    def __init__(self, probes):
        self.probes, self.calls = probes, 0

    def __call__(self, x, generator):
        z = torch.zeros_like(x)
        for row, (j, k) in self.probes.items():
            if j == self.calls:
                z[row, k] = 1.0
        self.calls += 1
        return z


def affine_readout(monkeypatch, sampler, score, d, sch, stop, opts):
    """``(c, M, [G_j e_k])`` of the sampler's output as an affine function of its start and its draws."""
    count = UnitNoise({})
    monkeypatch.setattr(S, "_noise", count)
    sampler(score, torch.zeros(1, d, dtype=F64), sch, stop=stop, **opts)
    n_calls = count.calls
    probes = {1 + d + j * d + k: (j, k) for j in range(n_calls) for k in range(d)}
    x = torch.zeros(1 + d + n_calls * d, d, dtype=F64)
    x[1:1 + d] = torch.eye(d, dtype=F64)
    monkeypatch.setattr(S, "_noise", UnitNoise(probes))
    y = sampler(score, x, sch, stop=stop, **opts).x
    c = y[0]
    M = (y[1:1 + d] - c).T
    G = y[1 + d:] - c
    return c, M, G


@pytest.mark.parametrize("diag", [True, False], ids=["diagonal", "full"])
@pytest.mark.parametrize("sampler,opts", CASES, ids=[f"{f.__name__}{o}" for f, o in CASES])
def test_law_equals_the_samplers_affine_map(monkeypatch, sampler, opts, diag):
    d, stop = 2, 2
    sch = schedules.theory(14, 2.0, 4.0, max_alphabar_T=None)
    if diag:
        target = targets.DiagonalGaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([1.5, 0.3], dtype=F64))
        init = targets.DiagonalGaussian(torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([0.9, 1.2], dtype=F64))
    else:
        target = targets.Gaussian(torch.tensor([1.0, -0.5], dtype=F64),
                                  torch.tensor([[1.5, 0.4], [0.4, 0.6]], dtype=F64))
        init = targets.Gaussian(torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([[0.9, 0.2], [0.2, 1.2]],
                                                                                   dtype=F64))
    c, M, G = affine_readout(monkeypatch, sampler, target.score, d, sch, stop, opts)
    L = laws.law(sampler, target.affine_score(), init, sch, stop=stop, **opts)
    assert isinstance(L, targets.DiagonalGaussian) == diag
    C0 = init.cov
    torch.testing.assert_close(L.loc, M @ init.loc + c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(L.cov, M @ C0 @ M.T + G.T @ G, rtol=1e-10, atol=1e-12)


def test_step_maps_of_one_step(monkeypatch):
    """step_maps alone: one step t -> t - 1 of each sampler equals its (M, c, q_pre, q_post) at every t."""
    sch = schedules.linear(30)
    g = targets.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[1.2, -0.3], [-0.3, 0.8]], dtype=F64))
    # the last step alone (stop = T - 1) for every sampler: M, c and the noise variances
    for sampler, opts in CASES:
        t = sch.T
        c, M, G = affine_readout(monkeypatch, sampler, g.score, 2, sch, t - 1, opts)
        Mm, cc, q_pre, q_post = laws.step_maps(sampler, g.affine_score(), sch, t, **opts)
        torch.testing.assert_close(M, Mm, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c, cc, rtol=1e-10, atol=1e-12)
        Mm = Mm if Mm.ndim == 2 else torch.diag(Mm)
        want = q_pre * Mm @ Mm.T + q_post * torch.eye(2, dtype=F64)
        torch.testing.assert_close(G.T @ G, want, rtol=1e-10, atol=1e-14)


def test_law_rejects_what_the_samplers_reject():
    g = targets.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    sch = schedules.linear(40)
    for bad, name in [(dict(stop=40), "stop"), (dict(stop=-1), "stop"), (dict(stop=True), "stop"),
                      (dict(eta=-0.1), "eta"), (dict(varianc="beta"), "varianc")]:
        with pytest.raises(ValueError, match=name):
            laws.law(S.ddim if "eta" in bad else S.ddpm, g.affine_score(), g, sch, **bad)
    with pytest.raises(ValueError, match="AffineScore"):
        laws.law(S.ddpm, g.score, g, sch)
    with pytest.raises(ValueError, match="Gaussian or DiagonalGaussian"):
        laws.law(S.ddpm, g.affine_score(), targets.GaussianMixture([1.0], [[0.0, 0.0]], [torch.eye(2).tolist()]),
                 sch)
    with pytest.raises(ValueError, match="no exact law"):
        laws.law(S.multistep_ode, g.affine_score(), g, sch)
    L = laws.law(S.ddpm, g.affine_score(), g, sch, stop=39)          # stop = T - 1 is a valid single step
    assert isinstance(L, targets.Gaussian) and torch.isfinite(L.cov).all()


def test_law_mixed_diagonal_score_and_full_init():
    """A diagonal score with a full initial covariance (and the reverse) uses the full propagation and agrees
    with the all-full computation."""
    dg = targets.DiagonalGaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([1.5, 0.3], dtype=F64))
    fg = targets.Gaussian(dg.loc, dg.cov)
    init_full = targets.Gaussian(torch.tensor([0.1, 0.2], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.7]],
                                                                                    dtype=F64))
    init_diag = targets.DiagonalGaussian(torch.tensor([0.1, 0.2], dtype=F64), torch.tensor([1.0, 0.7], dtype=F64))
    sch = schedules.linear(30)
    for sampler, opts in CASES:
        a = laws.law(sampler, dg.affine_score(), init_full, sch, stop=1, **opts)
        b = laws.law(sampler, fg.affine_score(), init_full, sch, stop=1, **opts)
        torch.testing.assert_close(a.loc, b.loc)
        torch.testing.assert_close(a.cov, b.cov)
        a = laws.law(sampler, fg.affine_score(), init_diag, sch, stop=1, **opts)
        b = laws.law(sampler, dg.affine_score(), init_diag, sch, stop=1, **opts)
        assert isinstance(b, targets.DiagonalGaussian) and isinstance(a, targets.Gaussian)
        torch.testing.assert_close(a.loc, b.loc)
        torch.testing.assert_close(a.cov, b.cov)
        assert math.isfinite(float(a.cov.sum()))
