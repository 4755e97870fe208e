"""The PyTorch Lightning integration: sifted fits on one device and under strategy="ddp" (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from _ddp import free_port  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402

import smartsift as ss  # noqa: E402
from smartsift.integrations.lightning import (  # noqa: E402
    SiftedTrainLoader,
    SiftingCallback,
    plain_steps_per_epoch,
    sift_dataloader,
    with_distributed_sampler,
)

N, BATCH, EPOCHS = 128, 16, 2  # 8 raw batches per epoch; TopK(0.5) makes 4 refined ones
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DDP_TIMEOUT_S = 180  # a hang fails the test instead of blocking the suite


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def column(self, key: str) -> list[float]:
        return [metrics[key] for _, metrics in self.rows if key in metrics]


class Classifier(L.LightningModule):
    """A linear classifier whose training data is sifted; it counts its validation runs."""

    def __init__(self, policy: ss.Policy | None = None, **sift_kwargs: Any) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, 4, generator=g)
        self.data = TensorDataset(x, (x[:, 0] > 0).long())
        self.policy = ss.TopK(0.5) if policy is None else policy
        self.sift_kwargs = sift_kwargs
        self.validations = 0
        self.loaders_built = 0

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y, reduction="none")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.per_sample_loss(batch).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.per_sample_loss(batch).mean())

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def train_dataloader(self) -> SiftedTrainLoader:
        self.loaders_built += 1
        loader = DataLoader(self.data, batch_size=BATCH, shuffle=True)
        return sift_dataloader(self, loader, self.policy, seed=0, **self.sift_kwargs)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=64)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        plain_total = EPOCHS * plain_steps_per_epoch(N, BATCH)  # sized for plain training
        linear = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / plain_total)
        per_epoch = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=1.0)
        return [optimizer], [
            {"scheduler": linear, "interval": "step"},
            {"scheduler": per_epoch, "interval": "epoch"},
        ]


def fit(
    model: Classifier, callbacks: list[Any] | None = None, **trainer_kwargs: Any
) -> tuple[Any, MemoryLogger]:
    logger = MemoryLogger()
    settings: dict[str, Any] = dict(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=logger,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    settings.update(trainer_kwargs)
    trainer = L.Trainer(
        callbacks=[SiftingCallback()] if callbacks is None else callbacks, **settings
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model)
    return trainer, logger


def schedules(trainer: Any) -> tuple[Any, Any]:
    step, epoch = (config.scheduler for config in trainer.lr_scheduler_configs)
    return step, epoch


# ------------------------------------------------------------------ one device
def test_a_module_trains_its_epochs_on_sifted_batches_with_stats_logged() -> None:
    model = Classifier()
    trainer, logger = fit(model)
    sifted = trainer.train_dataloader
    stats = sifted.stats
    assert isinstance(sifted, SiftedTrainLoader) and sifted.loader is not None
    assert stats.samples_seen == EPOCHS * N and stats.epochs == EPOCHS
    assert stats.samples_trained == EPOCHS * N // 2 < stats.samples_seen
    assert trainer.global_step == stats.steps == EPOCHS * 4  # every sifted batch, one step
    assert trainer.current_epoch == EPOCHS
    # Each epoch ended when its sifted data did: validation ran at both ends.
    assert model.validations == EPOCHS
    # Logged every step (log_every_n_steps=1) through the module's logger.
    seen = logger.column("smartsift/samples_seen")
    assert len(seen) == trainer.global_step and seen[-1] == EPOCHS * N
    assert logger.column("smartsift/keep_rate")[-1] == 0.5
    assert logger.column("smartsift/steps")[-1] == trainer.global_step
    assert trainer.callback_metrics["smartsift/samples_trained"] == EPOCHS * N // 2


def test_step_schedules_follow_the_data_and_epoch_schedules_the_epochs() -> None:
    trainer, _ = fit(Classifier())
    step, epoch = schedules(trainer)
    plain_total = EPOCHS * plain_steps_per_epoch(N, BATCH)
    assert trainer.global_step == plain_total // 2  # half the data trained on
    assert step.last_epoch == plain_total  # ...but the whole schedule was run, to lr 0
    assert step.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert epoch.last_epoch == EPOCHS


def test_without_the_callback_it_still_sifts_but_warns_and_the_schedule_follows_steps() -> None:
    with pytest.warns(UserWarning, match="no SiftingCallback"):
        trainer, logger = fit(Classifier(), callbacks=[])
    step, _ = schedules(trainer)
    assert trainer.train_dataloader.stats.samples_trained == EPOCHS * N // 2
    assert step.last_epoch == trainer.global_step == EPOCHS * 4
    assert not logger.column("smartsift/samples_seen")


def test_an_epoch_cut_short_by_limit_train_batches_is_abandoned_cleanly() -> None:
    trainer, _ = fit(Classifier(), limit_train_batches=2)
    stats = trainer.train_dataloader.stats
    assert trainer.global_step == stats.steps == 2 * EPOCHS
    assert trainer.current_epoch == EPOCHS and stats.samples_seen < EPOCHS * N


def test_a_reloaded_loader_is_followed_by_the_callback() -> None:
    model = Classifier()
    trainer, logger = fit(model, reload_dataloaders_every_n_epochs=1)
    step, _ = schedules(trainer)
    assert model.loaders_built == EPOCHS
    assert trainer.train_dataloader.stats.samples_seen == N  # the new loader's own epoch
    assert step.last_epoch == EPOCHS * plain_steps_per_epoch(N, BATCH)
    assert logger.column("smartsift/samples_seen")[-1] == N


def test_a_sifted_loader_can_be_passed_to_fit() -> None:
    class NoHook(Classifier):
        train_dataloader = L.LightningModule.train_dataloader  # the hook left undefined

    model = NoHook()
    sifted = sift_dataloader(model, DataLoader(model.data, batch_size=BATCH), ss.TopK(0.5))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[SiftingCallback()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, train_dataloaders=sifted)
    assert trainer.train_dataloader is sifted and trainer.global_step == 4


def test_the_sift_delay_trains_unsifted_first() -> None:
    trainer, _ = fit(Classifier(sift_delay=8), max_epochs=1)  # the whole epoch
    stats = trainer.train_dataloader.stats
    assert stats.samples_passed == stats.samples_trained == N
    assert trainer.global_step == 8


# ------------------------------------------------------------------ settings and helpers
def test_a_module_without_a_per_sample_loss_needs_a_loss_fn() -> None:
    class NoLoss(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8).long()), batch_size=4)
    with pytest.raises(TypeError, match="per_sample_loss"):
        sift_dataloader(NoLoss(), loader)

    def loss_fn(module: Any, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(module.net(x), y, reduction="none")

    assert isinstance(sift_dataloader(NoLoss(), loader, loss_fn=loss_fn), SiftedTrainLoader)
    with pytest.raises(TypeError, match="LightningModule"):
        sift_dataloader(torch.nn.Linear(4, 2), loader)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bacth_size"):
        sift_dataloader(NoLoss(), loader, loss_fn=loss_fn, bacth_size=4)
    with pytest.raises(ValueError, match="sift_delay"):
        sift_dataloader(NoLoss(), loader, loss_fn=loss_fn, sift_delay=-1)


def test_iterating_outside_a_fit_says_where_to_use_it() -> None:
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        next(iter(sift_dataloader(Classifier(), [])))


def test_the_rebuilt_loader_keeps_its_settings_and_shards_the_data() -> None:
    data = TensorDataset(torch.arange(10))

    def collate(items: list[Any]) -> torch.Tensor:
        return torch.stack([item[0] for item in items])

    loader = DataLoader(data, batch_size=2, shuffle=False, drop_last=True, collate_fn=collate)
    shards = [with_distributed_sampler(loader, num_replicas=2, rank=r) for r in range(2)]
    assert all(isinstance(s.sampler, DistributedSampler) for s in shards)
    assert all(s.batch_size == 2 and s.drop_last and s.collate_fn is collate for s in shards)
    ids = [torch.cat(list(s)).tolist() for s in shards]
    assert len(ids[0]) == len(ids[1]) == 4  # 5 samples each, the incomplete batch dropped
    assert not set(ids[0]) & set(ids[1])  # shuffled (as Lightning's sampler) into disjoint shards
    assert with_distributed_sampler(shards[0], num_replicas=2, rank=0) is shards[0]
    assert with_distributed_sampler([1, 2], num_replicas=2, rank=0) == [1, 2]
    custom = DataLoader(data, batch_size=2, sampler=[0, 1, 2, 3])
    with pytest.raises(TypeError, match="DistributedSampler"):
        with_distributed_sampler(custom, num_replicas=2, rank=0)


def test_plain_steps_per_epoch_counts_a_ranks_batches() -> None:
    assert plain_steps_per_epoch(128, 16) == 8
    assert plain_steps_per_epoch(130, 16, world_size=2) == 5  # 65 samples per rank
    assert plain_steps_per_epoch(130, 16, world_size=2, drop_last=True) == 4
    with pytest.raises(ValueError, match="batch_size"):
        plain_steps_per_epoch(10, 0)


def test_importing_smartsift_does_not_import_lightning() -> None:
    code = (
        "import sys, smartsift, smartsift.integrations; "
        "print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------ DDP (2 CPU processes)
def test_the_example_trains_in_lockstep_under_ddp_and_sees_every_sample_once(
    tmp_path: Path,
) -> None:
    samples, epochs = 1000, 2  # 800 training samples: 400 per rank
    cmd = [
        sys.executable,
        str(EXAMPLES / "lightning_train.py"),
        "--devices=2",
        f"--epochs={epochs}",
        f"--samples={samples}",
        "--batch-size=32",
        "--width=8",
        "--sift-delay=2",
        f"--report={tmp_path / 'report'}",
        f"--out={tmp_path / 'logs'}",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    # Its own session: Lightning starts rank 1 from rank 0, and a hang must take both down.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the DDP run ran past {DDP_TIMEOUT_S} s (a hang?): {out}")
    assert proc.returncode == 0, out
    reports = [json.loads((tmp_path / f"report.rank{r}.json").read_text()) for r in range(2)]
    steps = [r["global_step"] for r in reports]
    assert steps[0] == steps[1] > 0, out  # lockstep: the same optimizer steps on both ranks
    for report in reports:
        stats = report["stats"]
        assert report["epochs"] == epochs and stats["epochs"] == epochs
        assert stats["steps"] == report["global_step"]
        assert stats["samples_seen"] == epochs * 400
        assert stats["samples_passed"] < stats["samples_kept"] < stats["samples_seen"]
        assert report["scheduler_steps"] == report["scheduler_total"] == epochs * 13
    for epoch in range(epochs):  # the ranks' shards: every sample once per epoch
        ids = [i for r in reports for i in r["seen_ids"][str(epoch)]]
        assert sorted(ids) == list(range(800)), f"epoch {epoch}"
    # Rank 0 logged the stats summed over both ranks (CSVLogger): more than one rank sees.
    (csv,) = (tmp_path / "logs").rglob("metrics.csv")
    header, *rows = [line.split(",") for line in csv.read_text().splitlines()]
    column = header.index("smartsift/samples_seen")
    logged = [float(row[column]) for row in rows if row[column]]
    assert logged and epochs * 400 < max(logged) <= epochs * 800
