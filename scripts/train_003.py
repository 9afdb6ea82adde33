"""Train the networks shipped with chapter 03 (document 003) and save them under ``data/weights/``.

    .venv/bin/python scripts/train_003.py [--score-steps 4000] [--head-steps 4000] [--out data/weights]

Produces ``003_score_grid.pt`` (a DSM score net on 003's 9-Gaussian grid) and the covariance heads
``003_head_{iddpm,sn,npr,ocm}_{grid_true,grid_net,rotated_true}.pt`` (trained against the exact score of the
grid, the learned score of the grid, the exact score of the rotated variant).  Every file records its training
settings and final loss.  The notebook ``notebooks/03_covariance.md`` retrains all of them with ``retrain=True``.

    .venv/bin/python scripts/train_003.py --fresh [--seed 1]

trains the **fresh draw** of chapter 03's ``learned_score`` verdict instead: a second score net on the grid from
another seed (``003_score_grid_fresh.pt``, seed ``--seed``, default 1) and the OCM head against it
(``003_head_ocm_grid_net_fresh.pt``, seed ``--seed + 10``), with the same settings as the shipped pair.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffnotes import covariance as cv
from diffnotes import nets, schedules

T = 1000


def dataset(name):
    return cv.mixture_003(name)


def train_score(mix, sch, steps=4000, seed=0):
    net, _ = cv.train_score_net(mix, sch, steps=steps, seed=seed)
    return net


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--score-steps", type=int, default=4000)
    ap.add_argument("--head-steps", type=int, default=4000)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "weights"))
    ap.add_argument("--seed", type=int, default=None, help="default 0 (1 with --fresh)")
    ap.add_argument("--fresh", action="store_true", help="train the fresh-draw score net and its OCM head only")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = 1 if args.fresh else 0
    torch.set_num_threads(1)          # a shared 2-core machine: one thread is several times faster
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sch = schedules.linear(T)
    t0 = time.time()
    grid = dataset("grid")
    net, losses = cv.train_score_net(grid, sch, steps=args.score_steps, seed=args.seed)
    final = sum(losses[-200:]) / len(losses[-200:])
    suffix = "_fresh" if args.fresh else ""
    nets.save(net, out / f"003_score_grid{suffix}.pt", T=T, steps=args.score_steps, seed=args.seed, final_loss=final)
    print(f"score net: final DSM loss {final:.4f} ({time.time() - t0:.0f} s)")
    if args.fresh:
        heads, hl = cv.train_heads(grid, nets.NetScore(net.eval()), sch, methods=("ocm",), steps=args.head_steps,
                                   seed=args.seed + 10)
        final = sum(hl["ocm"][-200:]) / len(hl["ocm"][-200:])
        nets.save(heads["ocm"], out / "003_head_ocm_grid_net_fresh.pt", T=T, steps=args.head_steps,
                  seed=args.seed + 10, final_loss=final)
        print(f"head ocm (grid_net, fresh): final loss {final:.4g} ({time.time() - t0:.0f} s)")
        return
    jobs = {"grid_true": (grid, grid), "grid_net": (grid, nets.NetScore(net.eval())),
            "rotated_true": (dataset("rotated"), dataset("rotated"))}
    for tag, (mix, score) in jobs.items():
        heads, hl = cv.train_heads(mix, score, sch, steps=args.head_steps, seed=args.seed + 10)
        for m, head in heads.items():
            final = sum(hl[m][-200:]) / len(hl[m][-200:])
            nets.save(head, out / f"003_head_{m}_{tag}.pt", T=T, steps=args.head_steps, seed=args.seed + 10,
                      final_loss=final)
            print(f"head {m} ({tag}): final loss {final:.4g} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
