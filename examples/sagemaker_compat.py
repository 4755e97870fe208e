"""A training script in SageMaker smart sifting's style, running on smartsift.

Only the imports differ from a script written for the reference system: its classes come from
``smartsift.compat.sagemaker`` (the reference's module paths are in the comments). One line
is smartsift's own, with no counterpart there: the learning-rate schedule, sized as for plain
training, is stepped through ``smartsift.DataSchedule`` so that it follows the data consumed and
ends where training ends, however many batches sifting leaves. It trains a
small CNN on MNIST-1D (generated locally, nothing is downloaded) with a custom batch type, a
``SiftingBatchTransform`` and a ``Loss``, and prints what sifting did::

    python examples/sagemaker_compat.py --epochs 4
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from smartsift import DataSchedule  # smartsift's own; the reference has no counterpart

# from smart_sifting.data_model.data_model_interface import SiftingBatch, SiftingBatchTransform
# from smart_sifting.data_model.tensor_batch import TensorBatch
# from smart_sifting.dataloader.sift_dataloader import SiftingDataloader
# from smart_sifting.loss.abstract_sift_loss_module import Loss
# from smart_sifting.sift_config.sift_configs import (
#     LossConfig, RelativeProbabilisticSiftConfig, SiftingBaseConfig)
from smartsift.compat.sagemaker import (
    Loss,
    LossConfig,
    RelativeProbabilisticSiftConfig,
    SiftingBaseConfig,
    SiftingBatch,
    SiftingBatchTransform,
    SiftingDataloader,
    TensorBatch,
)
from smartsift.demo import ConvNet, evaluate, make_mnist1d


class SignalBatch:
    """The training loop's batch type: neither a tensor, tuple, list nor dict."""

    def __init__(self, signals: torch.Tensor, labels: torch.Tensor) -> None:
        self.signals = signals
        self.labels = labels


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> SignalBatch:
    """Builds a ``SignalBatch`` from ``(signal, label)`` samples."""
    return SignalBatch(torch.stack([s for s, _ in samples]), torch.stack([y for _, y in samples]))


class SignalBatchTransform(SiftingBatchTransform):
    """``SignalBatch`` ↔ ``TensorBatch``, the form the sifting loader slices."""

    def transform(self, batch: SignalBatch) -> TensorBatch:
        return TensorBatch(batch.signals, batch.labels)

    def reverse_transform(self, tensor_batch: TensorBatch) -> SignalBatch:
        return SignalBatch(tensor_batch.inputs, tensor_batch.labels)


class SiftingImplementedLoss(Loss):
    """Cross-entropy per sample (``reduction='none'``), as the sifting loss needs."""

    def __init__(self) -> None:
        self.celoss = torch.nn.CrossEntropyLoss(reduction="none")

    def loss(
        self,
        model: torch.nn.Module,
        transformed_batch: SiftingBatch,
        original_batch: Any = None,
    ) -> torch.Tensor:
        device = next(model.parameters()).device
        return self.celoss(
            model(original_batch.signals.to(device)), original_batch.labels.to(device)
        )


def parse_args() -> argparse.Namespace:
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4000, help="MNIST-1D samples (80%% train)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beta", type=float, default=1.0, help="keeps about 1/(1+beta)")
    parser.add_argument("--history", type=int, default=500, help="losses ranked against")
    parser.add_argument("--sift-delay", type=int, default=20, help="steps before sifting")
    parser.add_argument("--width", type=int, default=32, help="channels of the CNN")
    return parser.parse_args()


def main() -> None:
    """Trains with sifting and prints the accuracy and what was sifted."""
    args = parse_args()
    torch.manual_seed(0)
    train_set, (x_test, y_test) = make_mnist1d(args.samples, seed=0)
    model = ConvNet(width=args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_dataloader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate
    )

    sift_config = RelativeProbabilisticSiftConfig(
        beta_value=args.beta,
        loss_history_length=args.history,
        loss_based_sift_config=LossConfig(
            sift_config=SiftingBaseConfig(sift_delay=args.sift_delay)
        ),
    )
    train_dataloader = SiftingDataloader(
        sift_config=sift_config,
        orig_dataloader=train_dataloader,
        batch_transforms=SignalBatchTransform(),
        loss_impl=SiftingImplementedLoss(),
        model=model,
        log_batch_data=False,
    )

    # A cosine sized as for plain training; smartsift's DataSchedule steps it by the data the
    # sifting loader consumed, so it ends with the last epoch (stepped per optimizer step, it
    # would stop part-way: a sifted epoch takes fewer steps).
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.epochs * steps_per_epoch
    )
    schedule = DataSchedule(cosine, train_dataloader.sifting_loader)

    for epoch in range(args.epochs):
        model.train()
        for batch in train_dataloader:
            loss = F.cross_entropy(model(batch.signals), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate(model, x_test, y_test)
        print(f"epoch {epoch}: test accuracy {accuracy:.3f}")

    stats = train_dataloader.stats
    print(
        f"seen={stats.samples_seen} trained={stats.samples_trained} "
        f"sifted={stats.samples_sifted} steps={stats.steps} keep_rate={stats.keep_rate:.3f} "
        f"lr={schedule.get_last_lr()[0]:.3g}"
    )


if __name__ == "__main__":
    main()
