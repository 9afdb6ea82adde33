"""Shipped weights against their training scripts (``scripts/train_003.py``, ``scripts/train_digits.py``).

Two checks per network, with the same seed and settings as the script:

* **the record**: the shipped network, run through the *same training loop* with learning rate 0 (Adam then leaves
  the weights unchanged; the loop draws fresh batches exactly as in training), has a mean loss equal to the
  ``final_loss`` recorded in its file (the mean of the last 200 training steps, where the cosine schedule has
  brought the learning rate to ~0) within 4 combined standard errors.  This fails if the weights, the loss, the
  data or the schedule changed since the file was written.
* **a short retraining** (300 steps, otherwise the script's settings and seed) lands near the recorded loss:
  its mean loss over its last 100 steps is at least the recorded loss minus 4 standard errors (a short run cannot
  beat the long one) and at most twice the recorded loss.  A few hundred steps do not reach the loss of several
  thousand (the 2-D score net reaches about 1.7x, 003's OCM head 1.4x), so the factor 2 is the
  tolerance of a short run, stated here; a broken loss, optimiser or data path misses it by far.
"""
import math

import pytest
import torch

from diffnotes import covariance as cv
from diffnotes import digits as dg
from diffnotes import nets, schedules

W = nets.WEIGHTS_DIR
SHORT = 300


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _mean_se(losses):
    t = torch.tensor(losses, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(t.numel()))


def _check_record(eval_losses, recorded, n_recorded=200):
    m, se = _mean_se(eval_losses)
    se_rec = se * math.sqrt(len(eval_losses) / n_recorded)       # the record averages 200 batches of one size
    z = abs(m - recorded) / math.hypot(se, se_rec)
    print(f"record: shipped net {m:.4g} +- {se:.2g}, recorded {recorded:.4g} ({z:.1f} se)")
    assert z < 4, f"shipped net's loss {m:.4g} +- {se:.2g} vs recorded {recorded:.4g}: {z:.1f} standard errors"


def _check_short(short_losses, recorded):
    m, se = _mean_se(short_losses[-100:])
    print(f"short retraining: {m:.4g} +- {se:.2g} = {m / recorded:.2f} x recorded {recorded:.4g}")
    assert recorded - 4 * se <= m <= 2 * recorded, f"{SHORT}-step retraining {m:.4g} vs recorded {recorded:.4g}"


@pytest.fixture(scope="module")
def sch():
    return schedules.linear(1000)


def test_score_003(sch):
    grid = cv.mixture_003("grid")
    net, meta = nets.load(W / "003_score_grid.pt")
    g = torch.Generator().manual_seed(123)
    ev = nets.train_dsm(net, lambda b, gen: grid.sample(b, generator=gen), sch, steps=100, batch=1024, lr=0.0,
                        generator=g)
    _check_record(ev, meta["final_loss"])
    _, short = cv.train_score_net(grid, sch, steps=SHORT, seed=meta["seed"])
    _check_short(short, meta["final_loss"])


def test_head_003(sch):
    """003's own OCM head, trained against the exact score of the grid (``train_003.py``: seed 10 + its index).
    (The SN head converges more slowly: 300 steps reach 2.1x its recorded loss, outside the factor 2.)"""
    grid = cv.mixture_003("grid")
    head, meta = nets.load(W / "003_head_ocm_grid_true.pt")
    i = cv.HEAD_METHODS.index("ocm")
    g = torch.Generator().manual_seed(123)
    ev = cv.train_head("ocm", head, grid, lambda b, gen: grid.sample(b, generator=gen), sch, steps=200,
                       batch=512, lr=0.0, generator=g)
    _check_record(ev, meta["final_loss"])
    _, short = cv.train_heads(grid, grid, sch, methods=("ocm",), steps=SHORT, seed=meta["seed"] + i)
    _check_short(short["ocm"], meta["final_loss"])


def test_score_digits(sch):
    split = dg.load_split(**dg.SPLIT)
    net, meta = nets.load(W / "digits_score.pt")
    assert meta["settings"] == dg.SCORE and meta["split"] == dg.SPLIT and meta["T"] == dg.T
    g = torch.Generator().manual_seed(123)
    ev = nets.train_dsm(net, lambda b, gen: dg.Empirical(split.x_train).sample(b, generator=gen), sch, steps=100,
                        batch=dg.SCORE["batch"], lr=0.0, generator=g)
    _check_record(ev, meta["final_loss"])
    _, short = dg.train_score(split, sch, steps=SHORT, seed=meta["seed"])
    _check_short(short, meta["final_loss"])
