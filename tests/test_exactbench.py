"""The exact-error benchmark (diffnotes.exactbench) against independent references: the exact laws of
diffnotes.laws, the closed-form Gaussian KL, a Monte Carlo estimate with its error bar, and refusals."""
import argparse
import math
import sys
import textwrap

import pytest
import torch

from diffnotes import exactbench as E, laws, metrics, samplers as S, schedules
from diffnotes.targets import Gaussian, GaussianMixture


def gauss(d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.logspace(-1, 0.5, d, dtype=torch.float64)
    return Gaussian(torch.randn(d, generator=g, dtype=torch.float64), (Q * lam) @ Q.T)


@pytest.mark.parametrize("name", ["ddim", "flow_ode", "accel_ode"])
def test_probe_recovers_the_exact_law_of_the_package_samplers(name):
    """A and b from d + 1 probes give N(A mu + b, A S A^T), equal to laws.law (derived from the update formulas
    separately) for two different starting laws, to 1e-10."""
    tgt = gauss()
    sch = schedules.linear(40)
    model = E.EpsModel(tgt)
    f = getattr(S, name)
    A, b, res = E.probe(lambda x: f(model.score, x, sch).x, 3)
    assert res < 1e-12
    mu = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    Sd = torch.diag(torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64))
    for m0, C0 in [(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)), (mu, Sd)]:
        L = laws.law(f, tgt.affine_score(), Gaussian(m0, C0), sch, stop=0)
        assert torch.allclose(A @ m0 + b, L.loc, rtol=1e-10, atol=1e-12)
        assert torch.allclose(A @ C0 @ A.T, L.cov, rtol=1e-10, atol=1e-12)


def test_probe_multistep_against_the_diagonal_law():
    """multistep_ode against laws.law on a diagonal Gaussian (its exact-law reference)."""
    from diffnotes.targets import DiagonalGaussian
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    var = torch.tensor([0.2, 3.0], dtype=torch.float64)
    tgt = DiagonalGaussian(mean, var)
    sch = schedules.linear(30)
    model = E.EpsModel(tgt)
    A, b, _ = E.probe(lambda x: S.multistep_ode(model.score, x, sch).x, 2)
    init = DiagonalGaussian(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    L = laws.law(S.multistep_ode, tgt.affine_score(), init, sch, stop=0)
    assert torch.allclose(b, L.loc, rtol=1e-10, atol=1e-12)
    assert torch.allclose((A @ A.T).diagonal(), L.var, rtol=1e-10)
    assert float((A - torch.diag(A.diagonal())).abs().max()) < 1e-14     # coordinate-wise, as it must be


def test_non_affine_samplers_are_refused():
    mix = GaussianMixture(torch.tensor([0.5, 0.5], dtype=torch.float64),
                          torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64),
                          torch.stack([0.3 * torch.eye(2, dtype=torch.float64)] * 2))
    model = E.EpsModel(mix)
    sch = schedules.linear(40)
    with pytest.raises(E.NotAffineError, match="not an affine map"):
        E.probe(lambda x: S.ddim(model.score, x, sch).x, 2)
    # a stochastic sampler (fresh noise per row) on a Gaussian target
    tgt = gauss(2)
    m2 = E.EpsModel(tgt)
    with pytest.raises(E.NotAffineError, match="stochastic"):
        E.probe(lambda x: S.ddpm(m2.score, x, sch, generator=torch.Generator().manual_seed(0)).x, 2)
    # float32 arithmetic inside: affine only to ~1e-7
    with pytest.raises(E.NotAffineError, match="float32"):
        E.probe(lambda x: S.ddim(lambda y, lab: m2.score(y, lab).float().double(), x.float().double(), sch).x
                .float().double(), 2)
    with pytest.raises(ValueError, match="float64"):
        E.probe(lambda x: x.float(), 2)
    with pytest.raises(ValueError, match="d must be"):
        E.probe(lambda x: x, 0)
    # the benchmark refuses a mixture path in d > 2 and non-samplers
    with pytest.raises(ValueError, match="nfe must be"):
        E.score_sampler(E.package_sampler("ddim"), tgt, [0])
    with pytest.raises(ValueError, match="unknown package sampler"):
        E.package_sampler("nope")


def test_stable_kl_equals_the_closed_form():
    g = torch.Generator().manual_seed(3)
    B = torch.randn(4, 4, generator=g, dtype=torch.float64)
    Cq = B @ B.T + torch.eye(4, dtype=torch.float64)
    for eps in (0.3, 1e-3):
        Cp = Cq + eps * torch.diag(torch.tensor([1.0, -0.5, 0.2, 0.1], dtype=torch.float64))
        mp = eps * torch.ones(4, dtype=torch.float64)
        ref = metrics.kl_gaussian(Gaussian(mp, Cp), Gaussian(torch.zeros(4, dtype=torch.float64), Cq))
        got = E.kl_gaussian_stable(mp, Cp, torch.zeros(4, dtype=torch.float64), Cq)
        assert abs(float(got) / float(ref) - 1) < 1e-8
    # far below where the textbook formula stops: second order in the perturbation, as it must be
    k1 = E.kl_gaussian_stable(torch.zeros(4, dtype=torch.float64), Cq * (1 + 1e-9), torch.zeros(4,
                              dtype=torch.float64), Cq)
    assert abs(float(k1) / (4 * 1e-18 / 4) - 1) < 1e-6


def test_change_of_variables_agrees_with_the_affine_probe():
    """A 1-D Gaussian given as a one-component mixture goes through the autograd / quadrature path; the KLs equal
    the closed-form ones of the affine path."""
    m, v = torch.tensor([0.7], dtype=torch.float64), torch.tensor([[0.05]], dtype=torch.float64)
    as_gauss, as_mix = Gaussian(m, v), GaussianMixture(torch.ones(1, dtype=torch.float64), m[None], v[None])
    fn = E.package_sampler("accel_ode")
    a = E.score_sampler(fn, as_gauss, [10, 40])
    b = E.score_sampler(fn, as_mix, [10, 40], n_grid=1501)
    for ra, rb in zip(a, b):
        assert ra["nfe"] == rb["nfe"] == ra["nfe_requested"]
        assert rb["method"] == "change of variables" and ra["method"] == "affine probe"
        for k in ("kl", "kl_disc"):
            assert abs(rb[k] / ra[k] - 1) < 1e-8, (k, ra[k], rb[k])


diffusers = pytest.importorskip("diffusers")


def test_diffusers_scheduler_runs_in_float64_and_matches_monte_carlo():
    """Euler (diffusers) on a 2-D Gaussian at 8 NFE: the exact KL lies within 4 standard errors (plus the
    estimator's bias measured on exact draws of the target, true value 0) of a k-NN Monte Carlo estimate from
    20 000 samples run through the same scheduler."""
    tgt = gauss(2, seed=1)
    fn = E.diffusers_sampler("Euler")
    r = E.score_sampler(fn, tgt, [8])[0]
    assert fn.downcasts[0] > 0              # EulerDiscreteScheduler.step casts the sample to float32: kept float64
    assert r["residual"] < 1e-12 and r["kl"] > 0.05
    n = 20_000
    est, se, nfe = E.mc_kl(fn, tgt, 8, n, generator=torch.Generator().manual_seed(5))
    assert nfe == r["nfe"] == 8
    x = tgt.sample(n, generator=torch.Generator().manual_seed(6))
    bias, _, _ = metrics.kl_knn(x, lambda u: tgt.log_prob(u, 0.0))
    assert abs(est - r["kl"]) <= 4 * se + abs(float(bias)), (est, se, r["kl"], float(bias))
    # and the test can fail: the exact KL at twice the NFE is far outside the band
    r2 = E.score_sampler(fn, tgt, [16])[0]
    assert abs(est - r2["kl"]) > 4 * se + abs(float(bias))


def test_diffusers_default_clipping_is_refused_and_float64_is_kept():
    tgt = gauss(2)
    with pytest.raises(E.NotAffineError):
        E.score_sampler(E.diffusers_sampler("DDIM", config={"clip_sample": True}), tgt, [10])
    # without the float64 guard, DPM-Solver++ computes its step in float32: affine to ~1e-7 only, refused
    with pytest.raises(E.NotAffineError, match="float32"):
        E.score_sampler(E.diffusers_sampler("DPM-Solver++(2M)", keep_float64=False), tgt, [10])
    r = E.score_sampler(E.diffusers_sampler("DPM-Solver++(2M)"), tgt, [10])[0]
    assert r["residual"] < 1e-12
    with pytest.raises(ValueError, match="no shared grid"):
        E.diffusers_sampler("iPNDM", shared_grid=True)


def test_cli_scores_a_custom_sampler(tmp_path, monkeypatch, capsys):
    (tmp_path / "mysampler.py").write_text(textwrap.dedent("""
        import torch
        def ddim(x, model, nfe):
            lab = model.schedule.log_alphabar                     # training schedule, t = 0..T
            ts = torch.linspace(model.schedule.T, 0, nfe + 1).round().long().tolist()
            for t, s in zip(ts[:-1], ts[1:]):
                a, b = lab[t], lab[s]
                eps = model(x, a)
                x0 = (x - torch.sqrt(-torch.expm1(a)) * eps) / torch.exp(0.5 * a)
                x = torch.exp(0.5 * b) * x0 + torch.sqrt(-torch.expm1(b)) * eps
            return x
        def noisy(x, model, nfe):
            return x + torch.randn_like(x)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    ns = argparse.Namespace(sampler="mysampler:ddim", nfe=[10, 20], d=3)
    assert E.main(ns) == 0
    out = capsys.readouterr().out
    assert "Gaussian d=3" in out and "1-D mixture" in out and "change of variables" in out
    assert E.main(argparse.Namespace(sampler="mysampler:noisy", nfe=[10], d=3)) == 2
    assert "not an affine map" in capsys.readouterr().err
    assert E.main(argparse.Namespace(sampler="nomodule", nfe=[10], d=3)) == 2
    capsys.readouterr()
    # through the package's command line: python -m diffnotes exactbench module:callable --nfe ...
    from diffnotes import cli
    assert cli.main(["exactbench", "mysampler:ddim", "--nfe", "10", "--d", "2"]) == 0
    assert "Gaussian d=2" in capsys.readouterr().out
    assert cli.main(["exactbench", "mysampler:ddim", "--nfe", "0"]) == 2
