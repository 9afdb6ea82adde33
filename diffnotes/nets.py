"""Small score networks and denoising score matching (DSM).

``EpsMLP`` predicts the noise ``eps`` of ``x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps`` from ``(x_t, lab)``; the score
is ``s(x_t) = -eps_hat / sqrt(1 - ab)`` (:class:`NetScore`).  ``train_dsm`` minimises the DSM loss
``E || eps_hat(x_t, lab) - eps ||^2`` over steps ``t`` drawn uniformly from a schedule: this is the denoising
score identity of document 003 with the weight ``sigma_t^2``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .schedules import VPSchedule

__all__ = ["EpsMLP", "NetScore", "fit", "train_dsm", "dsm_loss", "save", "load", "WEIGHTS_DIR"]

#: where the repository keeps trained weights (with the script that made them, e.g. ``scripts/train_003.py``);
#: found from the package, so a notebook finds them whatever its working directory.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "data" / "weights"


def seeded(build, seed):
    """Call ``build()`` (which creates parameters) under ``torch.manual_seed(seed)`` without touching the global
    random state, so that the same seed gives the same weights in any process; ``seed=None`` calls it plainly."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class EpsMLP(nn.Module):
    """An MLP ``(x, lab) -> eps_hat`` with Fourier features of the log-SNR ``lab - log(1 - ab)``."""

    def __init__(self, d, hidden=128, layers=3, n_freq=16, seed=None):
        """``seed``: initialise the weights from ``torch.manual_seed(seed)`` without touching the global random
        state (the same seed gives the same net in any process); ``None`` draws from the global generator, whose
        start-up seed differs from process to process."""
        super().__init__()
        seeded(lambda: self._build(d, hidden, layers, n_freq), seed)

    def _build(self, d, hidden, layers, n_freq):
        self.d, self.hidden, self.layers, self.n_freq = d, hidden, layers, n_freq
        self.register_buffer("freq", torch.exp(torch.linspace(math.log(0.05), math.log(4.0), n_freq)))
        dims = [d + 2 * n_freq] + [hidden] * layers
        mods = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*mods, nn.Linear(hidden, d))

    def config(self):
        return {"d": self.d, "hidden": self.hidden, "layers": self.layers, "n_freq": self.n_freq}

    def forward(self, x, lab):
        lab = torch.as_tensor(lab, dtype=x.dtype, device=x.device)
        logsnr = lab - torch.log(-torch.expm1(lab))
        u = logsnr.reshape(-1, 1).expand(x.shape[0], 1) * self.freq
        return self.body(torch.cat([x, torch.sin(u), torch.cos(u)], dim=-1))


class NetScore:
    """``score(x, lab) = -eps_hat(x, lab) / sqrt(1 - ab)``, evaluated in the net's dtype, returned in ``x``'s."""

    def __init__(self, net):
        self.net = net
        self.dtype = next(net.parameters()).dtype

    @torch.no_grad()
    def __call__(self, x, lab):
        lab = torch.as_tensor(lab, dtype=torch.float64, device=x.device)
        eps = self.net(x.to(self.dtype), lab.to(self.dtype)).to(x.dtype)
        return -eps / torch.sqrt(-torch.expm1(lab)).to(x.dtype)

    def eps(self, x, lab):
        """The raw noise prediction, with gradients (for Jacobian-based estimators)."""
        lab = torch.as_tensor(lab, dtype=self.dtype, device=x.device)
        return self.net(x.to(self.dtype), lab).to(x.dtype)


def dsm_loss(net, x0, schedule, generator=None):
    """One Monte Carlo estimate of the DSM loss on a batch ``x0`` with steps uniform on ``1..T``."""
    n = x0.shape[0]
    t = torch.randint(1, schedule.T + 1, (n,), generator=generator, device=x0.device)
    lab = schedule.log_alphabar.to(x0.device)[t].to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    xt = torch.exp(0.5 * lab)[:, None] * x0 + torch.sqrt(-torch.expm1(lab))[:, None] * eps
    return ((net(xt, lab) - eps) ** 2).sum(-1).mean()


def fit(params, step_loss, *, steps, lr, progress=False, desc="training"):
    """Adam with a cosine learning-rate decay over ``steps``; ``step_loss()`` draws one batch and returns its loss.
    Returns the loss per step."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=desc, leave=False)
    losses = []
    for _ in it:
        loss = step_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
    return losses


def train_dsm(net, sample_x0, schedule, *, steps=2000, batch=512, lr=2e-3, generator=None, progress=False):
    """Train ``net`` by DSM on fresh draws ``sample_x0(batch, generator)``; returns the loss per step.

    Adam with a cosine learning-rate decay; float32 unless the net is float64."""
    if not isinstance(schedule, VPSchedule):
        raise ValueError("schedule must be a VPSchedule")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be positive, got steps={steps}, batch={batch}")
    dtype = next(net.parameters()).dtype
    return fit(net.parameters(), lambda: dsm_loss(net, sample_x0(batch, generator).to(dtype), schedule, generator),
               steps=steps, lr=lr, progress=progress, desc="DSM")


def save(net, path, **meta):
    torch.save({"config": net.config(), "state": net.state_dict(), "meta": meta}, path)


def load(path, cls=EpsMLP):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = cls(**blob["config"])
    net.load_state_dict(blob["state"])
    return net, blob["meta"]
