"""The exact-error benchmark: any deterministic sampler, scored against an exact target with no Monte Carlo error.

With the exact score of a Gaussian target, every deterministic sampler built from linear combinations of ``x`` and
model outputs (DDIM, DPM-Solver(++), UniPC, DEIS, Euler, Heun, PNDM, iPNDM, LMS, ...) is an affine map
``x_T -> A x_T + b``.  :func:`probe` recovers ``A`` and ``b`` from ``d + 1`` inputs (the zero vector and the basis
vectors, one batched call) and checks the map on random inputs; the output law for ``x_T ~ N(mu, S)`` is then
``N(A mu + b, A S A^T)`` and its KL to the target is exact.  On a low-dimensional mixture the output density follows
by change of variables, with the Jacobian of the whole sampling loop by autograd (:func:`pushforward_logdet`), and
the KL by quadrature over the source variable.

A sampler is any callable ``sampler_fn(x_T, model, nfe) -> x_0`` (rows are independent samples); ``model`` is an
:class:`EpsModel`: ``model(x, lab)`` is the exact noise prediction ``eps = -sqrt(1 - alphabar) score`` at the noise
level ``lab = log alphabar``, ``model.score(x, lab)`` the exact score, ``model.schedule`` the training schedule; it
counts its (batched) calls, which is the NFE reported.  Adapters: :func:`diffusers_sampler` (a diffusers scheduler's
loop driven in float64) and :func:`package_sampler` (the samplers of :mod:`diffnotes.samplers`).

Two errors are reported, both ``KL(p_Y || p_X)`` (the sampler's output law first) at ``t = 0``, the data:

* ``kl``: ``x_T ~ N(0, I)`` as the sampler is used (includes the error of starting from ``N(0, I)`` rather than the
  true marginal at the first noise level);
* ``kl_disc``: ``x_T`` drawn from the true marginal ``q`` at the sampler's first noise level (read from its first
  model call), mapped into the sampler's input coordinates: an exact solver of the probability-flow ODE would give
  ``p_X`` exactly, so this is the discretisation error alone, whose decay with the NFE is the sampler's order.

Both are finite: the target ``N(m, Sigma)`` has ``Sigma`` positive definite, and the output law ``N(b, A S A^T)`` is
non-degenerate because every step of these samplers is invertible (:func:`probe` reports ``log det A``; a singular
``A`` is refused).  Stochastic samplers are not affine maps of ``x_T`` (fresh noise per row): :func:`probe` refuses
them; :func:`mc_kl` scores them by Monte Carlo with an error bar, and the package's own stochastic samplers are exact
through :mod:`diffnotes.laws`.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import warnings

import torch

from . import metrics, samplers as S, schedules
from .convergence import tv_quadrature_source
from .targets import DiagonalGaussian, Gaussian, GaussianMixture

__all__ = ["EpsModel", "NotAffineError", "probe", "kl_gaussian_stable", "score_sampler", "pushforward_logdet",
           "diffusers_sampler", "package_sampler", "DIFFUSERS", "mc_kl", "load_callable", "main"]


class NotAffineError(ValueError):
    """The sampler is not an affine map of ``x_T`` to float64 rounding (a non-affine score, a stochastic sampler, or
    float32 arithmetic inside)."""


# ---------------------------------------------------------------------------------------------------------- model
class EpsModel:
    """The exact noise predictor of ``target`` (a :class:`Gaussian`, :class:`DiagonalGaussian` or
    :class:`GaussianMixture`): ``model(x, lab) = -sqrt(1 - alphabar) score(x, lab)`` in float64, whatever the dtype of
    ``x`` (returned in that dtype).  ``calls`` counts batched evaluations; ``labs`` records the noise levels."""

    def __init__(self, target, schedule=None):
        self.target = target
        # a Gaussian's score through its affine form (U diag(1/v) U^T per level): the mixture path's softmax over a
        # single component costs milliseconds per call on some inputs, for nothing
        self._score = target.affine_score() if isinstance(target, Gaussian) else target.score
        self.schedule = schedule if schedule is not None else schedules.linear(1000)
        self.calls, self.labs = 0, []

    def score(self, x, lab):
        return self._eval(x, lab, eps=False)

    def __call__(self, x, lab):
        return self._eval(x, lab, eps=True)

    def _eval(self, x, lab, eps):
        # alphabar = 0 (iPNDM's first level) is read as log alphabar = -700: exp(-700) ~ 1e-304, so the prediction
        # equals the exact one at alphabar = 0 (eps = x) to rounding
        lab = torch.as_tensor(lab, dtype=torch.float64).reshape(()).clamp_min(-700.0)
        self.calls += 1
        self.labs.append(float(lab))
        s = self._score(x.to(torch.float64), lab)
        if eps:
            s = -torch.sqrt(-torch.expm1(lab)) * s
        return s.to(x.dtype)

    def v(self, x, lab):
        """The v-prediction ``sqrt(alphabar) eps - sqrt(1 - alphabar) E[x_0 | x]`` (iPNDM's model output), with the
        exact posterior mean, so that it stays exact at ``alphabar = 0`` (``v = -E[x_0]``)."""
        lab = torch.as_tensor(lab, dtype=torch.float64).reshape(()).clamp_min(-700.0)
        eps = self(x, lab).to(torch.float64)
        if isinstance(self.target, (Gaussian, DiagonalGaussian)):
            # affine posterior mean m + sqrt(ab) Sigma V^-1 (x - sqrt(ab) m) = m - sqrt(ab) Sigma s(x)
            s, t = self._score(x.to(torch.float64), lab), self.target
            x0 = t.loc - torch.exp(0.5 * lab) * (s * t.var if isinstance(t, DiagonalGaussian) else s @ t.cov)
        else:
            x0, _ = self.target.posterior_x0(x.to(torch.float64), lab)
        return (torch.exp(0.5 * lab) * eps - torch.sqrt(-torch.expm1(lab)) * x0).to(x.dtype)

    def reset(self):
        self.calls, self.labs = 0, []


# ---------------------------------------------------------------------------------------------------------- probe
def probe(fn, d, *, rtol=1e-8, n_check=3, generator=None, device=None):
    """``(A, b, residual)`` of the map ``fn`` (a callable on ``(n, d)`` float64 batches, rows independent) from one
    batched call on the zero vector, the ``d`` basis vectors and ``n_check`` random points ``2 N(0, I)``.

    ``residual`` is ``max |fn(z) - (A z + b)|`` over the random points, relative to the largest output; above
    ``rtol`` the map is not affine to float64 rounding and :class:`NotAffineError` is raised, saying how far off it
    is (about 1e-7: float32 arithmetic inside; order 1: a non-affine or stochastic sampler)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    if not (isinstance(rtol, float) and 0 < rtol < 1):
        raise ValueError(f"rtol must be a float in (0, 1), got {rtol!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    g = generator if generator is not None else torch.Generator(device=dev).manual_seed(0)
    Z = 2 * torch.randn(n_check, d, dtype=torch.float64, device=dev, generator=g)
    X = torch.cat([torch.zeros(1, d, dtype=torch.float64, device=dev),
                   torch.eye(d, dtype=torch.float64, device=dev), Z])
    Y = fn(X)
    if not torch.is_tensor(Y) or Y.shape != X.shape:
        raise ValueError(f"the sampler must return a tensor of shape {tuple(X.shape)}, got "
                         f"{tuple(Y.shape) if torch.is_tensor(Y) else type(Y).__name__}")
    if Y.dtype != torch.float64:
        raise ValueError(f"the sampler returned {Y.dtype} for float64 input: the exact benchmark needs float64 "
                         "throughout")
    if not torch.isfinite(Y).all():
        raise ValueError("the sampler returned non-finite values")
    b = Y[0]
    A = (Y[1:d + 1] - b).T
    pred = Z @ A.T + b
    scale = float(Y.abs().max().clamp_min(1e-300))
    residual = float((pred - Y[d + 1:]).abs().max()) / scale
    if not residual <= rtol:
        why = ("float32 arithmetic inside the sampler?" if residual < 1e-4 else
               "a non-affine score (a mixture), a nonlinear step, or fresh noise per sample (a stochastic sampler)?")
        raise NotAffineError(f"the sampler is not an affine map of x_T to float64 rounding: residual {residual:.2e} "
                             f"> rtol = {rtol:.0e} on random probes ({why}); the exact Gaussian law needs an affine "
                             "map: use pushforward_logdet (deterministic, low d) or mc_kl (Monte Carlo)")
    return A, b, residual


def _moments(law):
    if isinstance(law, DiagonalGaussian):
        return law.loc, torch.diag(law.var)
    if isinstance(law, Gaussian):
        return law.loc, law.cov
    raise ValueError(f"expected a Gaussian or DiagonalGaussian, got {type(law).__name__}")


def _dminuslog1p(r):
    """``r - log1p(r)`` without cancellation for small ``|r|`` (series to ``r^9``)."""
    small = r.abs() < 1e-2
    rs = torch.where(small, r, torch.zeros_like(r))
    series = sum((-1) ** k * rs ** k / k for k in range(2, 10))
    return torch.where(small, series, r - torch.log1p(r.clamp_min(-1 + 1e-300)))


def kl_gaussian_stable(mp, Cp, mq, Cq):
    """``KL(N(mp, Cp) || N(mq, Cq))`` from the eigenvalues ``r_i`` of ``Lq^{-1} (Cp - Cq) Lq^{-T}`` (``Cq = Lq Lq^T``):
    ``1/2 [sum (r_i - log(1 + r_i)) + |Lq^{-1} (mp - mq)|^2]``.  Forming ``Cp - Cq`` first keeps its relative accuracy
    down to KL ~ 1e-25, where the textbook formula (traces and log-determinants of size ``d``) stops near ``d * 1e-15``."""
    Lq = torch.linalg.cholesky(Cq)
    D = torch.linalg.solve_triangular(Lq, torch.linalg.solve_triangular(Lq, Cp - Cq, upper=False).T, upper=False)
    r = torch.linalg.eigvalsh(0.5 * (D + D.T))
    if (r <= -1).any():
        raise ValueError("Cp is not positive definite: the sampler's output law is degenerate (KL infinite)")
    z = torch.linalg.solve_triangular(Lq, (mp - mq)[:, None], upper=False)
    return 0.5 * (_dminuslog1p(r).sum() + (z ** 2).sum())


# ------------------------------------------------------------------------------------------------ the benchmark
def _run_counted(sampler_fn, x, model, nfe):
    model.reset()
    info = {}
    y = sampler_fn(x, model, nfe) if not getattr(sampler_fn, "wants_info", False) else sampler_fn(x, model, nfe,
                                                                                                    info=info)
    return y, info


def score_sampler(sampler_fn, target, nfe_grid, *, name="", schedule=None, rtol=1e-8, grid_half_width=9.0,
                  n_grid=2001, progress=False, on_error="raise"):
    """Exact errors of a deterministic sampler on ``target`` for each requested NFE: a list of dicts with ``name``,
    ``nfe_requested``, ``nfe`` (model calls counted), ``kl`` (``x_T ~ N(0, I)``), ``kl_disc`` (``x_T`` from the
    true marginal at the first noise level), ``lab0`` (that level), ``residual`` (of the affine probe) and
    ``method`` (``"affine probe"`` or ``"change of variables"``).

    * Gaussian target (:class:`Gaussian`, :class:`DiagonalGaussian`): the map is probed (:func:`probe`), refused if
      not affine, and both KLs are closed-form Gaussian KLs (:func:`kl_gaussian_stable`).
    * Mixture in ``d <= 2``: the sampler runs on a tensor-product grid of the source variable over
      ``[-grid_half_width, grid_half_width]^d`` (``n_grid`` points per axis) with autograd through the loop
      (:func:`pushforward_logdet`), and ``KL(p_Y || p_X)`` is a quadrature over the source
      (:func:`diffnotes.convergence.tv_quadrature_source`).  The sampler must be deterministic and row-wise (checked).

    ``on_error="record"`` turns a failure at one NFE (non-finite output, a fold of the map) into a row with
    ``kl = nan`` and the message in ``error``; a refused (non-affine) sampler always raises.
    """
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    nfe_grid = [_check_nfe(n) for n in (nfe_grid if isinstance(nfe_grid, (list, tuple)) else [nfe_grid])]
    if not nfe_grid:
        raise ValueError("nfe_grid must hold at least one NFE")
    if not callable(sampler_fn):
        raise ValueError("sampler_fn must be a callable (x_T, model, nfe) -> x_0")
    model = EpsModel(target, schedule)
    rows = []
    it = nfe_grid
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(nfe_grid, desc=name or "score_sampler", leave=False)
    if not isinstance(target, (Gaussian, DiagonalGaussian, GaussianMixture)):
        raise ValueError(f"target must be a Gaussian, DiagonalGaussian or GaussianMixture, got {type(target).__name__}")
    for nfe in it:
        try:
            if isinstance(target, (Gaussian, DiagonalGaussian)):
                row = _score_gaussian(sampler_fn, target, model, nfe, rtol)
            else:
                row = _score_mixture(sampler_fn, target, model, nfe, grid_half_width, n_grid, check=not rows)
            row["error"] = ""
        except NotAffineError:
            raise
        except (ValueError, FloatingPointError) as e:
            if on_error == "raise":
                raise
            row = {"nfe": model.calls, "kl": math.nan, "kl_disc": math.nan, "lab0": math.nan, "residual": None,
                   "logdet": None, "method": "failed", "error": str(e)}
        rows.append(dict(row, name=name, nfe_requested=nfe))
    return rows


def _check_nfe(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"nfe must be a positive integer, got {n!r}")
    return n


def _score_gaussian(sampler_fn, target, model, nfe, rtol):
    d = target.d if isinstance(target, DiagonalGaussian) else target.means.shape[1]
    info = {}
    calls = []

    def fn(x):
        y, inf = _run_counted(sampler_fn, x, model, nfe)
        info.update(inf)
        calls.append((model.calls, list(model.labs)))
        return y
    A, b, residual = probe(fn, d, rtol=rtol, device=target.device)
    nfe_counted, labs = calls[-1]
    model.labs = labs
    sign, logdet = torch.linalg.slogdet(A)
    if float(sign) == 0:
        raise ValueError("the sampler's affine map is singular: its output law is degenerate (KL infinite)")
    mx, Cx = _moments(target)
    kl = kl_gaussian_stable(b, A @ A.T, mx, Cx)
    lab0, s = model.labs[0], float(info.get("input_scale", 1.0))
    q0 = target.marginal(lab0)
    m0, C0 = _moments(q0)
    kl_disc = kl_gaussian_stable(A @ m0 / s + b, A @ C0 @ A.T / s ** 2, mx, Cx)
    return {"nfe": nfe_counted, "kl": float(kl), "kl_disc": float(kl_disc), "lab0": lab0, "residual": residual,
            "logdet": float(logdet), "method": "affine probe"}


def pushforward_logdet(fn, z):
    """``(y, logdet)``: ``y = fn(z)`` for a row-wise map and ``log |det dy_i / dz_i|`` per row, by autograd through the
    whole of ``fn`` (``d`` backward passes).  Raises if the graph is broken or the map reverses orientation."""
    z = z.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():      # samplers' finiteness checks read a scalar off the graph: harmless here
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        y = fn(z)
    if not torch.is_tensor(y) or y.shape != z.shape:
        raise ValueError(f"the sampler must return a tensor of shape {tuple(z.shape)}")
    if not y.requires_grad:
        raise ValueError("the sampler's output does not depend on x_T through autograd (it detaches, or calls "
                         ".item()/numpy): the change of variables needs a differentiable loop")
    d = z.shape[1]
    rows = [torch.autograd.grad(y[:, i].sum(), z, retain_graph=i < d - 1)[0] for i in range(d)]
    J = torch.stack(rows, 1)
    sign, ld = torch.linalg.slogdet(J)
    if (sign <= 0).any():
        raise ValueError("the sampler's map is not orientation-preserving on the source grid (det <= 0)")
    return y.detach(), ld.detach()


def _score_mixture(sampler_fn, target, model, nfe, half, n_grid, check=True):
    d = target.means.shape[1]
    if d > 2:
        raise ValueError(f"mixture targets are scored by quadrature in d <= 2 only, got d = {d}")
    dev = target.device
    z, cell = metrics.grid(-half, half, n_grid, d, device=dev)
    info = {}

    def fn(x):
        y, inf = _run_counted(sampler_fn, x, model, nfe)
        info.update(inf)
        return y
    # deterministic and row-wise: a few rows alone give the same outputs as inside the batch
    y, ld = pushforward_logdet(fn, z)
    nfe_counted, labs = model.calls, list(model.labs)
    k = torch.linspace(0, z.shape[0] - 1, 5, device=dev).long()
    if check and not torch.allclose(fn(z[k]), y[k], rtol=1e-10, atol=1e-12):
        raise NotAffineError("the sampler is not a deterministic row-wise map (rows alone differ from rows in the "
                             "batch: fresh noise?): use mc_kl")
    logq = target.log_prob(y, 0.0)
    log_std = -0.5 * (z ** 2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
    _, kl = tv_quadrature_source(log_std, logq, ld, cell)
    lab0, s = labs[0], float(info.get("input_scale", 1.0))
    log_disc = target.log_prob(s * z, lab0) + d * math.log(s)
    _, kl_disc = tv_quadrature_source(log_disc, logq, ld, cell)
    return {"nfe": nfe_counted, "kl": float(kl), "kl_disc": float(kl_disc), "lab0": lab0, "residual": None,
            "logdet": None, "method": "change of variables"}


def mc_kl(sampler_fn, target, nfe, n, *, generator=None, k=1, n_batches=20):
    """Monte Carlo ``KL(p_Y || p_X)`` of any sampler (stochastic ones included) with ``x_T ~ N(0, I)``: ``n``
    samples, the k-nearest-neighbour estimator :func:`diffnotes.metrics.kl_knn` with the exact ``log p_X``.
    Returns ``(estimate, standard error, nfe)`` (the error bar is by batch means)."""
    d = target.d if isinstance(target, DiagonalGaussian) else target.means.shape[1]
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    model = EpsModel(target)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    y, _ = _run_counted(sampler_fn, x, model, _check_nfe(nfe))
    est, se, _ = metrics.kl_knn(y.detach(), lambda u: target.log_prob(u, 0.0), k=k, n_batches=n_batches)
    return float(est), float(se), model.calls


# ------------------------------------------------------------------------------------------------------ adapters
# name: (diffusers class, config of the run on its own default grid, the order its paper claims, model evaluations
# per step (to turn an NFE into num_inference_steps), where the claim is made).  DDIM's default clip_sample=True
# (clipping of the x_0 prediction to [-1, 1], for images) is turned off: clipped, the map is not affine.
PACKAGE = {"ddim (package)": ("ddim", 1, "DDIM, first order"),
           "flow_ode (package)": ("flow_ode", 1, "002, Theorem 1: TV <~ d / T"),
           "accel_ode (package)": ("accel_ode", 2, "002, Theorem 2 (stated at t = 1; here at t = 0)"),
           "multistep_ode (package)": ("multistep_ode", 2, "002, multistep reading of Theorem 2")}
DIFFUSERS = {
    "DDIM": ("DDIMScheduler", {"clip_sample": False}, 1, 1, "Song et al. 2021 (= DPM-Solver-1, Lu et al. 2022)"),
    "PNDM": ("PNDMScheduler", {}, 2, 1, "Liu et al. 2022 (second-order convergence; 4th-order Adams-Bashforth "
                                        "weights)"),
    "DPM-Solver++(2M)": ("DPMSolverMultistepScheduler", {}, 2, 1, "Lu et al. 2022b"),
    "DPM-Solver++(3M)": ("DPMSolverMultistepScheduler", {"solver_order": 3}, 3, 1, "Lu et al. 2022b"),
    "DPM-Solver(2S)": ("DPMSolverSinglestepScheduler", {}, 2, 1, "Lu et al. 2022a"),
    "UniPC(bh2, p=2)": ("UniPCMultistepScheduler", {}, 3, 1, "Zhao et al. 2023 (UniC raises order p to p+1)"),
    "DEIS(2)": ("DEISMultistepScheduler", {}, 2, 1, "Zhang & Chen 2023"),
    "DEIS(3)": ("DEISMultistepScheduler", {"solver_order": 3}, 3, 1, "Zhang & Chen 2023"),
    "Euler": ("EulerDiscreteScheduler", {}, 1, 1, "Karras et al. 2022"),
    "Heun": ("HeunDiscreteScheduler", {}, 2, 2, "Karras et al. 2022"),
    "KDPM2": ("KDPM2DiscreteScheduler", {}, 2, 2, "Karras et al. 2022 / DPM-Solver-2"),
    "LMS(4)": ("LMSDiscreteScheduler", {}, 4, 1, "linear multistep (k-diffusion), order 4"),
    "iPNDM": ("IPNDMScheduler", {}, 4, 1, "Zhang & Chen 2023 (improved PNDM, 4th-order Adams-Bashforth)"),
}

# the shared grid: "trailing" timestep spacing (starts at the last training step) and a final step to the data
SHARED = {"timestep_spacing": "trailing"}
_SHARED_EXTRA = {"DDIMScheduler": {"set_alpha_to_one": True}, "PNDMScheduler": {"set_alpha_to_one": True}}
_NO_SPACING = ("DPMSolverSinglestepScheduler", "IPNDMScheduler")     # no timestep_spacing option: no shared grid


@contextlib.contextmanager
def _keep_float64(count):
    """While a scheduler steps, ``tensor.to(torch.float32)`` on a float64 tensor keeps float64 (and is counted):
    DPMSolverMultistepScheduler.step and EulerDiscreteScheduler.step cast the sample to float32."""
    orig = torch.Tensor.to

    def to(self, *args, **kw):
        if self.dtype == torch.float64 and (torch.float32 in args or kw.get("dtype") is torch.float32):
            count[0] += 1
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            if kw.get("dtype") is torch.float32:
                kw["dtype"] = torch.float64
        return orig(self, *args, **kw)
    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = orig


@contextlib.contextmanager
def _quiet():
    """diffusers' notices while a scheduler is built (a changed option is logged and shows in the results) and
    numpy 2's DeprecationWarning on ``np.array(tensor)`` inside ``set_timesteps``."""
    from diffusers.utils import logging as dlog
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        dlog.set_verbosity(level)


def _upcast(sched):
    for k, v in list(vars(sched).items()):
        if torch.is_tensor(v) and v.is_floating_point() and k != "timesteps":
            setattr(sched, k, v.to(torch.float64))


def _level(sched, t):
    """``log alphabar`` of the model call at timestep ``t``: the noise level the scheduler assumes there."""
    cls = type(sched).__name__
    if cls == "IPNDMScheduler":
        i = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
        return 2 * torch.log(sched.alphas[i].to(torch.float64))
    c = sched.scale_model_input(torch.ones(1, 1, dtype=torch.float64), t)[0, 0]
    if float(c) != 1.0:                         # k-diffusion style: x_VE / sqrt(sigma^2 + 1)
        return 2 * torch.log(c)
    if hasattr(sched, "_sigma_to_alpha_sigma_t") and hasattr(sched, "sigmas"):
        if sched.step_index is None:
            sched._init_step_index(t)
        alpha, _ = sched._sigma_to_alpha_sigma_t(sched.sigmas[sched.step_index])
        return 2 * torch.log(alpha.to(torch.float64))
    return torch.log(sched.alphas_cumprod[int(t)].to(torch.float64))


def diffusers_sampler(name_or_class, *, schedule=None, config=None, shared_grid=False, keep_float64=True,
                      generator=None):
    """A sampler ``fn(x_T, model, nfe)`` running a diffusers scheduler's loop in float64 with ``model`` as its
    noise predictor.  ``name_or_class``: a key of :data:`DIFFUSERS` or a scheduler class name; ``schedule``: the
    training schedule (default: DDPM's linear, T = 1000), handed to the scheduler as ``trained_betas`` and its
    ``alphas_cumprod`` replaced by the float64 values; ``config``: extra scheduler options; ``shared_grid``: the
    "trailing" spacing and a final step to the data (:data:`SHARED`).  After ``set_timesteps`` every floating tensor
    of the scheduler is cast to float64 (their values as diffusers computed them: some in float32, so the time
    grid is the scheduler's own to float32 rounding, and the model is called at exactly that grid's noise levels),
    and with ``keep_float64`` the casts of the sample to float32 inside ``step`` are kept in float64
    (``fn.downcasts`` counts them).  The input is ``x_T`` as a pipeline draws it (``randn``), multiplied by the
    scheduler's ``init_noise_sigma``; the output's dtype is checked to be float64.  ``generator`` is handed to
    ``step`` (stochastic schedulers such as DDPMScheduler draw their noise from it)."""
    import diffusers
    cls_name, base, claimed, per_step, _ = DIFFUSERS.get(name_or_class, (name_or_class, {}, None, 1, ""))
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise ValueError(f"unknown scheduler {name_or_class!r} (known: {', '.join(DIFFUSERS)})")
    sch = schedule if schedule is not None else schedules.linear(1000)
    opts = dict(base)
    if shared_grid:
        if cls_name in _NO_SPACING:
            raise ValueError(f"{cls_name} has no timestep_spacing option: no shared grid")
        opts.update(SHARED, **_SHARED_EXTRA.get(cls_name, {}))
    opts.update(config or {})
    downcasts = [0]
    step_kw = {} if generator is None else {"generator": generator}

    def make():
        kw = dict(num_train_timesteps=sch.T)
        if cls_name != "IPNDMScheduler":
            kw["trained_betas"] = sch.beta[1:sch.T + 1].numpy()
        s = cls(**kw, **opts)
        if hasattr(s, "alphas_cumprod"):
            s.alphas_cumprod = sch.alphabar[1:sch.T + 1].clone()
        return s

    def fn(x, model, nfe, info=None):
        with _quiet():
            sched = make()
            steps = max(1, (nfe + per_step - 1) // per_step if per_step > 1 else nfe)
            sched.set_timesteps(steps)
        _upcast(sched)
        scale = sched.init_noise_sigma
        scale = float(scale)
        y = x * scale
        first = True
        with contextlib.ExitStack() as stack:
            if keep_float64:
                stack.enter_context(_keep_float64(downcasts))
            for t in sched.timesteps:
                lab = _level(sched, t)
                if first and info is not None:
                    # the sampler reads y = scale * x_T as the VP state sqrt(alphabar0) * y at lab0 (k-diffusion
                    # schedulers work with y = x_VP / sqrt(alphabar)); VP schedulers: scale 1, factor 1
                    c = sched.scale_model_input(torch.ones(1, 1, dtype=torch.float64), t)[0, 0]
                    info["input_scale"] = scale * float(c)
                first = False
                yin = sched.scale_model_input(y, t)
                out = model.v(yin, lab) if cls_name == "IPNDMScheduler" else model(yin, lab)
                y = sched.step(out, t, y, **step_kw).prev_sample
        if y.dtype != x.dtype:
            raise ValueError(f"{cls_name} returned {y.dtype} for a {x.dtype} input")
        return y
    fn.wants_info = True
    fn.downcasts = downcasts
    fn.claimed_order = claimed
    fn.__name__ = str(name_or_class)
    return fn


def uniform_steps(schedule, steps):
    """``schedule`` visited at ``steps`` uniformly spaced steps ``0 = t_0 < ... < t_steps = T`` (rounded): the skip-step
    schedule of a sampler run with fewer steps than the training schedule has (the "trailing" grid of diffusers)."""
    n = min(int(steps), schedule.T)
    ts = torch.linspace(0, schedule.T, n + 1, dtype=torch.float64).round().long().unique()
    return schedule.subsample(ts)


def package_sampler(name, *, schedule_fn=None, **options):
    """A sampler ``fn(x_T, model, nfe)`` for :mod:`diffnotes.samplers` ``name`` (``ddim``, ``flow_ode``, ``accel_ode``,
    ``multistep_ode``, ...) on ``schedule_fn(steps)`` (default: the model's training schedule at ``steps`` uniform
    steps, :func:`uniform_steps`), with ``steps = nfe`` (``nfe // 2`` for the two-evaluation ``accel_ode``)."""
    f = getattr(S, name, None)
    if name not in S.__all__ or not callable(f):
        raise ValueError(f"unknown package sampler {name!r}")
    per_step = 2 if name == "accel_ode" else 1

    def fn(x, model, nfe, info=None):
        steps = max(1, nfe // per_step)
        sch = schedule_fn(steps) if schedule_fn is not None else uniform_steps(model.schedule, steps)
        out = f(model.score, x, sch, **options)
        if info is not None:
            info["input_scale"] = 1.0
        return out.x
    fn.wants_info = True
    fn.__name__ = name
    return fn


def entries():
    """The benchmark's samplers: ``{label: (claimed order, where claimed, make_own, make_shared)}`` with
    ``make_own()`` the sampler on its own default time grid and ``make_shared()`` on the shared one (``None`` where
    the scheduler has no ``timestep_spacing`` option); the package's samplers have one grid (:func:`uniform_steps`,
    the same as the shared one), so both makers coincide."""
    out = {}
    for label, (cls, _, p, _, src) in DIFFUSERS.items():
        own = (lambda lb=label: diffusers_sampler(lb))
        shared = None if cls in _NO_SPACING else (lambda lb=label: diffusers_sampler(lb, shared_grid=True))
        out[label] = (p, src, own, shared)
    for label, (name, p, src) in PACKAGE.items():
        mk = (lambda nm=name: package_sampler(nm))
        out[label] = (p, src, mk, mk)
    return out


def final_step_floor(target, lab_last):
    """``KL(p_Y0 || p_X0)`` of a sampler that is exact down to the noise level ``lab_last`` and then takes one
    first-order step to the data, which returns the ``x_0``-prediction ``E[x_0 | x]`` (DDIM, Euler, Heun and
    DPM-Solver++ with ``lower_order_final`` all end so).  For ``N(m, Sigma)`` with eigenvalues ``lambda_i`` and
    ``s^2 = (1 - alphabar) / alphabar``: the exact flow scales the deviation from ``m`` by ``sqrt(lambda / (lambda +
    s^2))``, the prediction by ``lambda / (lambda + s^2)``, so the output variance is ``lambda^2 / (lambda + s^2)`` and
    ``KL = 1/2 sum_i (r_i - log(1 + r_i))`` with ``r_i = -s^2 / (lambda_i + s^2)`` (the mean is exact)."""
    lam = target.var if isinstance(target, DiagonalGaussian) else target.lam[0]
    s2 = torch.expm1(-torch.as_tensor(lab_last, dtype=torch.float64))
    r = -s2 / (lam + s2)
    return float(0.5 * _dminuslog1p(r).sum())


def measured_order(nfe, kl, top=3):
    """``-slope`` of ``log sqrt(KL)`` against ``log NFE`` by least squares over the last ``top`` points (``nan`` when
    a KL there is not positive and finite)."""
    x, y = list(nfe)[-top:], list(kl)[-top:]
    if len(x) < 2 or any(not (math.isfinite(k) and k > 0) for k in y):
        return math.nan
    lx, ly = [math.log(a) for a in x], [0.5 * math.log(b) for b in y]
    xm, ym = sum(lx) / len(lx), sum(ly) / len(ly)
    return -sum((a - xm) * (b - ym) for a, b in zip(lx, ly)) / sum((a - xm) ** 2 for a in lx)


# ------------------------------------------------------------------------------------------------------------ CLI
def load_callable(spec):
    """``module:callable`` (the module importable from the current directory) -> the callable."""
    import sys
    from pathlib import Path
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"expected module:callable, got {spec!r}")
    mod, attr = spec.split(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load {spec!r}: {e}") from e
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj


def benchmark_targets(d=8, seed=0, cond=1e3):
    """The chapter's targets: a correlated Gaussian in ``d`` dimensions whose covariance has eigenvalues
    log-spaced over ``[10 / cond, 10]`` (condition number ``cond``) in a random orthonormal basis, and a 1-D
    three-component mixture whose components overlap (its density stays above ``e^-3.5`` between them, so
    that the source quadrature converges: 2001 and 4001 points agree to about 1e-10)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.logspace(math.log10(10 / cond), 1, d, dtype=torch.float64)
    gauss = Gaussian(torch.randn(d, generator=g, dtype=torch.float64), (Q * lam) @ Q.T)
    mix = GaussianMixture(torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64),
                          torch.tensor([[-1.5], [0.3], [1.8]], dtype=torch.float64),
                          torch.tensor([[[0.25]], [[0.08]], [[0.12]]], dtype=torch.float64))
    return gauss, mix


def nfe_to_reach(nfes, kls, level=1e-3):
    """The smallest NFE of the grid from which on every (finite) KL is ``<= level`` (``None`` if none)."""
    best = None
    for n, k in sorted((n, k) for n, k in zip(nfes, kls) if math.isfinite(k))[::-1]:   # failed runs are skipped
        if k <= level:
            best = n
        else:
            break
    return best


def add_parser(sub):
    """The ``exactbench`` subcommand of ``python -m diffnotes`` (wired in :mod:`diffnotes.cli`)."""
    p = sub.add_parser("exactbench", help="exact KL of your own deterministic sampler: module:callable",
                       description=main.__doc__)
    p.add_argument("sampler", help="module:callable, a function (x_T, model, nfe) -> x_0 (module importable from "
                                   "the current directory)")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50], help="NFE budgets (default: 10 20 50)")
    p.add_argument("--d", type=int, default=8, help="dimension of the Gaussian target (default 8)")
    p.set_defaults(func=main)
    return p


def main(args):
    """``python -m diffnotes exactbench module:callable --nfe 10 20 50 [--d 8]``: the table for a user's sampler."""
    from .plotting import table
    try:
        if isinstance(args.d, bool) or not isinstance(args.d, int) or args.d < 1:
            raise ValueError(f"--d must be a positive integer, got {args.d!r}")
        fn = load_callable(args.sampler)
        gauss, mix = benchmark_targets(args.d)
        rows = []
        for tname, tgt in (("Gaussian d=%d" % args.d, gauss), ("1-D mixture", mix)):
            for r in score_sampler(fn, tgt, args.nfe, name=args.sampler):
                rows.append([tname, r["method"], r["nfe_requested"], r["nfe"], f"{r['kl']:.3e}",
                             f"{r['kl_disc']:.3e}"])
    except ValueError as e:
        import sys
        print(f"error: {e}", file=sys.stderr)
        return 2
    table(["target", "method", "NFE asked", "NFE counted", "KL(p_Y0 || p_X0), x_T ~ N(0, I)",
           "KL, x_T ~ q at first level"], rows,
          f"{args.sampler}: exact KL at t = 0 (nats), sampler's law first")
    return 0
