"""diffnotes: the algorithms behind the book, with exact references.

Modules: :mod:`~diffnotes.schedules`, :mod:`~diffnotes.targets`, :mod:`~diffnotes.samplers`,
:mod:`~diffnotes.laws`, :mod:`~diffnotes.metrics`, :mod:`~diffnotes.verdict`, :mod:`~diffnotes.params`,
:mod:`~diffnotes.plotting`.
"""
from . import laws, metrics, params, samplers, schedules, targets, verdict  # noqa: F401
from .samplers import CountingScore, Samples, accel_ode, accel_sde, ddim, ddpm, flow_ode  # noqa: F401
from .schedules import VPSchedule  # noqa: F401
from .targets import AffineScore, DiagonalGaussian, Gaussian, GaussianMixture  # noqa: F401

__version__ = "0.1.0"
