"""Train the networks shipped with chapter 06 (8x8 digits, document 003's least-steps table) into ``data/weights/``.

    .venv/bin/python scripts/train_digits.py [--score-steps 12000] [--head-steps 3000] [--clf-steps 2000]
                                             [--out data/weights] [--seed 0]

Produces ``digits_classifier.pt`` (the feature classifier of the Frechet distance, trained on the training split),
``digits_score.pt`` (a DSM score net, :class:`~diffnotes.nets.EpsMLP` on d = 64, linear schedule T = 1000) and the
covariance heads ``digits_head_{iddpm,sn,npr,ocm}.pt`` (trained against that score net).  Every file records its
settings, its final loss (mean of the last 200 steps) and its loss curve (means over 100-step windows).  The
notebook ``notebooks/06_digits.md`` retrains all of them with ``retrain=True``; ``tests/test_retrain.py`` checks
that a short retraining lands near the recorded loss.  About 5 minutes on one thread of a shared 2-core machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffnotes import digits as dg
from diffnotes import nets, schedules

SPLIT, CLF, SCORE, HEADS, T = dg.SPLIT, dg.CLF, dg.SCORE, dg.HEADS, dg.T


def summary(losses, window=100):
    """``(final loss = mean of the last 200 steps, curve = means over windows of 100 steps)``."""
    tail = losses[-200:]
    curve = [sum(losses[i:i + window]) / len(losses[i:i + window]) for i in range(0, len(losses), window)]
    return sum(tail) / len(tail), curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--score-steps", type=int, default=SCORE["steps"])
    ap.add_argument("--head-steps", type=int, default=HEADS["steps"])
    ap.add_argument("--clf-steps", type=int, default=CLF["steps"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "weights"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)          # a shared 2-core machine: one thread is several times faster
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sch = schedules.linear(T)
    split = dg.load_split(**SPLIT)
    t0 = time.time()
    clf, losses = dg.train_feature_classifier(split, args.clf_steps, args.seed)
    final, curve = summary(losses)
    acc = dg.accuracy(clf, split.x_test, split.y_test)
    nets.save(clf, out / "digits_classifier.pt", split=SPLIT, steps=args.clf_steps, seed=args.seed,
              settings=CLF, final_loss=final, loss_curve=curve, test_accuracy=acc)
    print(f"classifier: final loss {final:.4f}, held-out accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
    net, losses = dg.train_score(split, sch, args.score_steps, args.seed)
    final, curve = summary(losses)
    nets.save(net, out / "digits_score.pt", T=T, split=SPLIT, steps=args.score_steps, seed=args.seed,
              settings=SCORE, final_loss=final, loss_curve=curve)
    print(f"score net: final DSM loss {final:.4f} ({time.time() - t0:.0f} s)")
    heads, hl = dg.train_digit_heads(split, nets.NetScore(net.eval()), sch, args.head_steps, args.seed + 10)
    for m, head in heads.items():
        final, curve = summary(hl[m])
        nets.save(head, out / f"digits_head_{m}.pt", T=T, split=SPLIT, steps=args.head_steps, seed=args.seed + 10,
                  settings=HEADS, final_loss=final, loss_curve=curve)
        print(f"head {m}: final loss {final:.4g} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
