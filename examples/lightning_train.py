"""Train a small CNN on MNIST-1D with PyTorch Lightning, on sifted batches.

The LightningModule scores its data with its own ``per_sample_loss``; ``train_dataloader()``
returns ``sift_dataloader(self, DataLoader(...))`` and the Trainer gets a ``SiftingCallback``,
which logs smartsift's stats (``smartsift/*`` columns in the CSV log) and keeps the one-cycle
learning-rate schedule, sized for plain training, in step with the data. On the CPU, in one
process or two (DDP over gloo; every rank takes the same number of steps)::

    python examples/lightning_train.py
    python examples/lightning_train.py --devices 2

MNIST-1D is generated locally (nothing is downloaded). Each rank prints its steps and stats;
``--report PATH`` also writes them, with the sample ids each epoch pulled, to
``PATH.rank<r>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.demo import ConvNet, make_mnist1d
from smartsift.integrations.lightning import (
    SiftingCallback,
    plain_steps_per_epoch,
    sift_dataloader,
)


def parse_args() -> argparse.Namespace:
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=4000, help="MNIST-1D, 80%% for training")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--width", type=int, default=64, help="channels of the CNN")
    parser.add_argument("--beta", type=float, default=1.0, help="selectivity (keeps 1/(1+beta))")
    parser.add_argument("--sift-delay", type=int, default=5, help="raw batches before sifting")
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (DDP when > 1)")
    parser.add_argument("--out", default="lightning_logs", help="where the CSV logs go")
    parser.add_argument("--report", default=None, help="write each rank's stats here (JSON)")
    return parser.parse_args()


class MNIST1DClassifier(L.LightningModule):
    """A 1-D CNN whose training data is sifted with its own per-sample loss."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.net = ConvNet(width=args.width)
        train, (x_test, y_test) = make_mnist1d(args.samples)
        self.train_set = ss.IndexedDataset(train)  # samples become (index, x, y)
        self.val_set = TensorDataset(x_test, y_test)
        self.audit = ss.SiftAudit(id_key=0)  # which sample ids each epoch pulled

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        """One cross-entropy per sample: smartsift scores raw batches with it."""
        _, x, y = batch
        return F.cross_entropy(self.net(x), y, reduction="none")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.per_sample_loss(batch).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean(), sync_dist=True)

    def train_dataloader(self) -> Any:
        loader = DataLoader(self.train_set, batch_size=self.args.batch_size, shuffle=True)
        policy = ss.RelativeProbabilistic(beta=self.args.beta, history=500)
        return sift_dataloader(
            self, loader, policy, sift_delay=self.args.sift_delay, seed=0, audit=self.audit
        )

    def val_dataloader(self) -> Any:
        return DataLoader(self.val_set, batch_size=256)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
        # Sized as for plain training: SiftingCallback keeps it in step with the data.
        steps = self.args.epochs * plain_steps_per_epoch(
            len(self.train_set), self.args.batch_size, self.trainer.world_size
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main() -> None:
    """Trains, then prints (and with ``--report`` writes) this rank's steps and stats."""
    args = parse_args()
    torch.set_num_threads(1)  # one core per process on a small CPU machine
    L.seed_everything(0, verbose=False)
    model = MNIST1DClassifier(args)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        callbacks=[SiftingCallback()],
        logger=CSVLogger(args.out, name="smartsift"),
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model)

    stats = trainer.train_dataloader.stats
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    report = {
        "rank": trainer.global_rank,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val_acc": float(trainer.callback_metrics.get("val_acc", float("nan"))),
        "scheduler_steps": scheduler.last_epoch,
        "scheduler_total": scheduler.total_steps,
        "stats": stats.as_dict(),
        "seen_ids": {e: model.audit.epoch(e).seen.tolist() for e in model.audit.epochs},
    }
    print(
        f"[rank {trainer.global_rank}] global_step={trainer.global_step} steps={stats.steps} "
        f"seen={stats.samples_seen} kept={stats.samples_kept} trained={stats.samples_trained} "
        f"keep_rate={stats.keep_rate:.3f} schedule={scheduler.last_epoch}/{scheduler.total_steps} "
        f"val_acc={report['val_acc']:.3f}",
        flush=True,
    )
    if args.report:
        path = Path(f"{args.report}.rank{trainer.global_rank}.json")
        path.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
