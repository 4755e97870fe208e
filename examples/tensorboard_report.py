"""Watch what sifting does: stats to TensorBoard while training, a report picture at the end.

Trains a small CNN on MNIST-1D (generated locally, nothing is downloaded) through a
``SiftingDataLoader`` whose stats go to a TensorBoard ``SummaryWriter`` every few raw batches,
with an audit of sample ids so that the report can show the keep rate of every class::

    python examples/tensorboard_report.py --out runs/sifting
    tensorboard --logdir runs/sifting      # the smartsift/* scalars
    # runs/sifting/report.png: kept against sifted losses, keep rate over training, per class
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

import smartsift as ss
from smartsift.demo import ConvNet, evaluate, make_mnist1d
from smartsift.integrations.tensorboard import tensorboard_logger


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sifting"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--log-interval", type=int, default=5)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    train, (x_test, y_test) = make_mnist1d(num_samples=args.samples)
    data = ss.IndexedDataset(train)  # each batch carries its sample ids, for the audit
    model = ConvNet(width=args.width)
    raw = DataLoader(data, batch_size=128, shuffle=True)

    def loss_fn(m: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        _, x, y = batch
        return F.cross_entropy(m(x), y, reduction="none")

    writer = SummaryWriter(args.out)
    audit = ss.SiftAudit(id_key=0)
    loader = ss.SiftingDataLoader(
        raw,
        model,
        loss_fn,
        ss.RelativeProbabilistic(beta=1.0, history=1000),
        batch_size=64,
        sift_delay=len(raw),
        log_interval=args.log_interval,
        log_fn=tensorboard_logger(writer),
        audit=audit,
        seed=0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    plain_steps = args.epochs * math.ceil(len(data) / 64)  # sized as for plain training
    schedule = ss.DataSchedule(
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, plain_steps), loader
    )
    for epoch in range(args.epochs):
        for batch in loader:
            loss = loss_fn(model, batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate(model, x_test, y_test)
        writer.add_scalar("test/accuracy", accuracy, loader.stats.steps)
        print(f"epoch {epoch}: test accuracy {accuracy:.3f}", flush=True)
    writer.close()
    labels = train.tensors[1].numpy()  # the class of every sample id
    path = loader.report(args.out / "report.png", labels=labels, title="MNIST-1D, beta=1")
    print(loader.stats)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
