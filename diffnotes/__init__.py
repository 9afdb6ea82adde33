"""diffnotes: the algorithms behind the book, with exact references.

Modules: :mod:`~diffnotes.schedules`, :mod:`~diffnotes.targets`, :mod:`~diffnotes.samplers`,
:mod:`~diffnotes.laws`, :mod:`~diffnotes.metrics`, :mod:`~diffnotes.verdict`, :mod:`~diffnotes.params`,
:mod:`~diffnotes.plotting`, :mod:`~diffnotes.nets`; chapter modules :mod:`~diffnotes.convergence` (002),
:mod:`~diffnotes.covariance`, :mod:`~diffnotes.skipstep` and :mod:`~diffnotes.digits` (003), :mod:`~diffnotes.conditional` (001),
:mod:`~diffnotes.zeroshot` (000); :mod:`~diffnotes.cli` reruns a chapter.
"""
from . import (conditional, convergence, covariance, digits, laws, metrics, nets, params, samplers, schedules,  # noqa: F401
               skipstep, targets, verdict, zeroshot)
from .samplers import CountingScore, Samples, accel_ode, accel_sde, ddim, ddpm, flow_ode  # noqa: F401
from .schedules import VPSchedule  # noqa: F401
from .targets import AffineScore, DiagonalGaussian, Gaussian, GaussianMixture  # noqa: F401

__version__ = "0.1.0"
