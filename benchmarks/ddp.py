"""DDP benchmark: time per epoch of plain vs sifted training on 2 CPU ranks (gloo), MNIST-1D.

Both runs start from the same initial weights and read the same shards in the same order; the
sifted run wraps the same ``DataLoader`` in a ``SiftingDataLoader``. Each rank is a separate
process (one thread each) started by this script; epoch times are taken between barriers, so
they are the job's times, slowest rank included. The table also gives the share of the sifted
epoch spent in smartsift's own collectives (``loader.stats.comm_s``), waiting for the slowest
rank included.

Run it from the repository root (``python -m benchmarks.ddp [--smoke]``) or call :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Section

__all__ = ["Config", "run"]

WORLD = 2


@dataclass(frozen=True)
class Config:
    """One benchmark setting."""

    samples: int = 10_000  # MNIST-1D samples generated (80 % train)
    width: int = 100
    batch_size: int = 128  # per rank
    epochs: int = 3  # timed epochs per run
    beta: float = 1.0
    history: int = 1000
    lr: float = 3e-3


FULL = Config()
SMOKE = Config(samples=1000, width=16, batch_size=64, epochs=1, history=200)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- one rank
def _worker(rank: int, port: int, cfg: Config, out: Path) -> None:
    """Runs in each rank's process: trains plain, then sifted, and writes its figures as JSON."""
    import datetime
    import gc

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler

    import smartsift as ss
    from benchmarks.demo import ConvNet, cross_entropy_per_sample, evaluate, make_mnist1d
    from benchmarks.harness import seeded

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(minutes=5),
    )
    train_set, (x_test, y_test) = make_mnist1d(cfg.samples, seed=42)
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, shuffle=True, seed=0, drop_last=True
    )
    raw = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler)
    net = seeded(lambda: ConvNet(width=cfg.width), 0)
    init = {k: v.clone() for k, v in net.state_dict().items()}

    # Warm-up (allocator, kernels, gloo buffers), then both runs restart from `init`.
    model = DDP(net)
    x, y = next(iter(raw))
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
    del model
    gc.collect()
    results: dict[str, Any] = {}
    for mode in ("plain", "sifted"):
        net.load_state_dict(init)
        model = DDP(net)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-2)
        loader: Any = raw
        if mode == "sifted":
            loader = ss.SiftingDataLoader(
                raw,
                model,
                cross_entropy_per_sample,
                policy=ss.RelativeProbabilistic(beta=cfg.beta, history=cfg.history),
                seed=0,
            )
        times, steps, trained = [], 0, 0
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            dist.barrier()
            start = time.perf_counter()
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                trained += len(y)
            dist.barrier()
            times.append(time.perf_counter() - start)
        record = {
            "epoch_s": times,
            "steps": steps,
            "trained": trained,
            "accuracy": evaluate(net, x_test, y_test),
        }
        if mode == "sifted":
            stats = loader.stats
            record.update(
                comm_s=stats.comm_s,
                scoring_s=stats.scoring_s,
                selection_s=stats.selection_s,
                keep_rate=stats.keep_rate,
            )
        results[mode] = record
        # Free this run's DDP now: its reducer's hooks stay on the parameters while it lives,
        # and it holds the process group (gloo threads that outlive the interpreter can abort
        # the process at exit).
        del model, loader, optimizer
        gc.collect()
    dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(results))


# ----------------------------------------------------------------------------- the job
def _launch(cfg: Config, timeout: float) -> list[dict[str, Any]]:
    """Starts one process per rank, waits (at most ``timeout`` s) and returns their figures."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="smartsift-bench-ddp-") as tmp:
        out = Path(tmp)
        procs = []
        for rank in range(WORLD):
            cmd = [sys.executable, "-m", "benchmarks.ddp", "--_worker", str(rank)]
            cmd += ["--_port", str(port), "--_out", tmp, "--_config", json.dumps(asdict(cfg))]
            log = open(out / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
            procs.append(
                (
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                    log,
                )
            )
        deadline = time.monotonic() + timeout
        try:
            for proc, _ in procs:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        logs = "\n".join((out / f"rank{r}.log").read_text()[-2000:] for r in range(WORLD))
        if any(proc.returncode != 0 for proc, _ in procs):
            codes = [proc.returncode for proc, _ in procs]
            raise RuntimeError(f"DDP benchmark ranks failed or timed out (codes {codes}):\n{logs}")
        return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _table(cfg: Config, ranks: list[dict[str, Any]]) -> str:
    """The markdown report of one run."""
    lead = ranks[0]

    def per_epoch(mode: str) -> float:
        return sum(lead[mode]["epoch_s"]) / cfg.epochs

    plain_s, sifted_s = per_epoch("plain"), per_epoch("sifted")
    sifted_total = sum(lead["sifted"]["epoch_s"])
    comm = [r["sifted"]["comm_s"] for r in ranks]
    comm_share = sum(comm) / len(comm) / sifted_total if sifted_total else float("nan")
    lines = [
        f"DDP, {WORLD} ranks on CPU (gloo, 1 thread each), MNIST-1D ConvNet(width={cfg.width}), "
        f"{int(cfg.samples * 0.8)} train samples, batch {cfg.batch_size} per rank, "
        f"{cfg.epochs} epoch(s) per run, RelativeProbabilistic(beta={cfg.beta}, "
        f"history={cfg.history}), no sift delay.",
        "",
        "| run | s/epoch | steps/epoch/rank | samples trained/epoch/rank | test acc | "
        "smartsift comm s/epoch | comm share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, secs in (("plain", plain_s), ("sifted", sifted_s)):
        rec = lead[mode]
        comm_cell, share_cell = "–", "–"
        if mode == "sifted":
            comm_cell = f"{sum(comm) / len(comm) / cfg.epochs:.3f}"
            share_cell = f"{comm_share:.1%}"
        lines.append(
            f"| {mode} | {secs:.3f} | {rec['steps'] / cfg.epochs:.1f} | "
            f"{rec['trained'] / cfg.epochs:.0f} | {rec['accuracy']:.3f} | {comm_cell} | "
            f"{share_cell} |"
        )
    keep = sum(r["sifted"]["keep_rate"] for r in ranks) / len(ranks)
    scoring = sum(r["sifted"]["scoring_s"] for r in ranks) / len(ranks) / cfg.epochs
    lines += [
        "",
        f"Sifted / plain time per epoch: **{sifted_s / plain_s:.2f}x** (keep rate {keep:.1%}; "
        f"scoring pass {scoring:.3f} s/epoch per rank; comm share = mean over ranks of "
        "`loader.stats.comm_s` / sifted wall time). Test accuracy after so few epochs, sifted "
        "from the first batch, is shown for completeness, not as a verdict on sifting's "
        "accuracy.",
    ]
    return "\n".join(lines) + "\n"


def run(smoke: bool = False) -> Section:
    """Runs the benchmark and returns the report's section.

    Args:
        smoke: a tiny configuration (one short epoch) that only checks the machinery.
    """
    cfg = SMOKE if smoke else FULL
    return Section(
        "DDP: plain and sifted training on 2 CPU ranks",
        _table(cfg, _launch(cfg, timeout=120 if smoke else 900)),
    )


def main() -> None:
    """Command line: ``python -m benchmarks.ddp [--smoke]``; also the per-rank entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configuration")
    parser.add_argument("--_worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--_out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--_config", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker is not None:
        _worker(args._worker, args._port, Config(**json.loads(args._config)), Path(args._out))
        return
    print(run(smoke=args.smoke).markdown())


if __name__ == "__main__":
    main()
