"""Let ``ss.Auto`` decide when to sift, reading a validation metric as well as its own signals.

Trains a small CNN on MNIST-1D (generated locally, nothing is downloaded). ``Auto`` measures
the scoring pass against the training step and watches the loss distribution; given
``validate=``, it also checks the validation accuracy (held-out samples, not the test set) at
each judgement, and sifts only once that accuracy has stopped improving. Every change of mind
is logged with its reason::

    python examples/auto_validate.py
    # smartsift auto, epoch 0: plain (even losses): the higher-loss half of the samples ...
    # smartsift auto, epoch 1: plain (held-out improving): the validation metric is 0.375, ...

In this short run the validation accuracy improves to the end, so Auto trains plain
throughout and costs one validation per judgement and a short scored probe: it will not trade
accuracy the model is still gaining for compute.
"""

from __future__ import annotations

import argparse
import logging
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.demo import ConvNet, evaluate, make_mnist1d


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--every", type=int, default=30, help="raw batches between judgements")
    parser.add_argument("--patience", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    train_set, (x_test, y_test) = make_mnist1d(args.samples)
    # Validation samples: held out of training, and not the test set either.
    x, y = train_set.tensors
    n_val = len(x) // 10
    x_val, y_val = x[:n_val], y[:n_val]
    train_set = TensorDataset(x[n_val:], y[n_val:])

    model = ConvNet(width=args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)

    checks = []

    def val_accuracy() -> float:
        checks.append(evaluate(model, x_val, y_val))  # eval mode inside; mode restored after
        return checks[-1]

    policy = ss.Auto(
        ss.RelativeProbabilistic(beta=1.0),
        every=args.every,
        validate=val_accuracy,
        higher_is_better=True,
        patience=args.patience,
    )
    raw = DataLoader(train_set, batch_size=128, shuffle=True)
    loader = ss.SiftingDataLoader(
        raw,
        model,
        lambda m, batch: F.cross_entropy(m(batch[0]), batch[1], reduction="none"),
        policy=policy,
        batch_size=64,
    )
    steps_per_epoch = math.ceil(len(train_set) / 64)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.epochs * steps_per_epoch
    )
    schedule = ss.DataSchedule(scheduler, loader, total_steps=args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        stats = loader.stats
        print(
            f"epoch {epoch}: {stats.auto_state}, sifting={stats.auto_state == 'sift':d} "
            f"test_accuracy={evaluate(model, x_test, y_test):.4f}",
            flush=True,
        )
    s = loader.stats
    print(
        f"[total] seen={s.samples_seen} passed={s.samples_passed} kept={s.samples_kept} "
        f"sifted={s.samples_sifted} trained={s.samples_trained} "
        f"keep_rate={s.sift_keep_rate:.3f} checks={len(checks)}".replace("nan", "0"),
        flush=True,
    )


if __name__ == "__main__":
    main()
