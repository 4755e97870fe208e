"""Train a small CNN on MNIST-1D with DDP and smartsift sifting.

A self-contained script: it needs only smartsift with its demo extra (for the MNIST-1D
generator), torch and the standard library, so it runs from anywhere::

    pip install "smartsift[demo]"
    torchrun --nproc_per_node=2 ddp_train.py --epochs 3

Every rank generates the same MNIST-1D data (procedurally, nothing is downloaded), reads its
shard through a ``DistributedSampler``, and wraps its ``DataLoader`` in a ``SiftingDataLoader``
that scores each raw batch with the (unwrapped) model and keeps the high-loss samples. All ranks
take the same number of steps per epoch by construction. The learning rate follows a cosine
sized as for plain training and stepped through ``ss.DataSchedule``, so it progresses with the
data each rank consumes and reaches its end exactly when training ends, whatever is sifted.
At the end each rank prints its own stats and rank 0 prints the stats summed over all ranks
(the ``[global]`` line).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

import smartsift as ss
from smartsift.demo import make_mnist1d


class ConvNet(torch.nn.Module):
    """A 1-D CNN for MNIST-1D (signals of length 40, 10 classes)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv1d(1, width, 5, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv1d(width, width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv1d(width, width, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(width * 5, 10)  # 40 positions -> 19 -> 10 -> 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)))


def loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """smartsift's scoring loss: one cross-entropy per sample (``reduction="none"``)."""
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy, in eval mode; the model is put back in train mode afterwards."""
    model.eval()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return accuracy


def parse_args() -> argparse.Namespace:
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8000, help="MNIST-1D samples (80%% train)")
    parser.add_argument("--width", type=int, default=64, help="channels of the CNN")
    parser.add_argument("--beta", type=float, default=1.0, help="selectivity (keeps 1/(1+beta))")
    parser.add_argument("--batch-size", type=int, default=64, help="per-rank batch size")
    parser.add_argument("--history", type=int, default=500, help="losses ranked against")
    parser.add_argument("--sift-delay", type=int, default=10, help="raw batches before sifting")
    parser.add_argument("--lr", type=float, default=3e-3)
    return parser.parse_args()


def main() -> None:
    """Sets up the process group, trains, prints per-rank and global stats."""
    args = parse_args()
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # one core per process on a small CPU machine
    # A timeout: if a rank dies outside the loader, the others fail after it instead of hanging.
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()

    train_set, (x_test, y_test) = make_mnist1d(args.samples, seed=42)  # same data on every rank
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, shuffle=True, seed=0, drop_last=True
    )
    raw = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)

    torch.manual_seed(0)
    net = ConvNet(width=args.width).to(device)
    model = DDP(net, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    loader = ss.SiftingDataLoader(
        raw,
        model,  # the scoring pass calls the module inside DDP: no collective runs in it
        loss_fn,
        policy=ss.RelativeProbabilistic(beta=args.beta, history=args.history),
        sift_delay=args.sift_delay,
        device=device,
        seed=0,
    )
    # Sized as for plain training: the steps an epoch of this rank's data takes at the batch
    # size trained on. DataSchedule steps it by the data consumed, not the optimizer steps.
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.epochs * steps_per_epoch
    )
    schedule = ss.DataSchedule(cosine, loader)

    start = time.perf_counter()
    steps = 0
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)  # reshuffles the DistributedSampler
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()  # where scheduler.step() would be
            steps += 1
        if rank == 0:
            acc = evaluate(net, x_test.to(device), y_test.to(device))
            print(f"epoch {epoch}: test accuracy {acc:.3f}, {loader.stats}", flush=True)
    elapsed = time.perf_counter() - start

    stats = loader.stats
    for r in range(world):  # print in rank order
        if r == rank:
            print(
                f"[rank {rank}] steps={steps} seen={stats.samples_seen} kept={stats.samples_kept} "
                f"trained={stats.samples_trained} keep_rate={stats.keep_rate:.3f} "
                f"scoring={stats.scoring_s:.2f}s comm={stats.comm_s:.2f}s total={elapsed:.2f}s "
                f"lr={schedule.get_last_lr()[0]:.3g}",
                flush=True,
            )
        dist.barrier()
    total = loader.global_stats()  # a collective: every rank calls it
    if rank == 0:
        print(
            f"[global] ranks={world} seen={total.samples_seen} kept={total.samples_kept} "
            f"sifted={total.samples_sifted} trained={total.samples_trained} "
            f"dropped={total.samples_dropped} steps={total.steps} "
            f"keep_rate={total.keep_rate:.3f}",
            flush=True,
        )
    # Free DDP (its reducer holds the process group) while the interpreter is fully alive, then
    # tear the group down: gloo threads that outlive the interpreter can abort the process at exit.
    del loader, model, optimizer
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
