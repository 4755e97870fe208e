"""The PyTorch Lightning integration: scoring and loss reuse, on one device and under
strategy="ddp" (CPU), and resuming from Lightning's own checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from _ddp import free_port, run_ranks, run_session  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402

import smartsift as ss  # noqa: E402
from smartsift.integrations.lightning import (  # noqa: E402
    ReuseTrainLoader,
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
    model: L.LightningModule,
    callbacks: list[Any] | None = None,
    ckpt_path: Path | None = None,
    **trainer_kwargs: Any,
) -> tuple[Any, MemoryLogger]:
    """Fits ``model`` on the CPU (from ``ckpt_path``, loaded with ``weights_only=True``)."""
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
        warnings.filterwarnings("error", message=".*not resumable.*")
        trainer.fit(model, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
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


# ------------------------------------------------------------------ loss reuse, resuming
REUSE_EPOCHS = 3  # with TopK(0.5): 8 batches, then 4 and 4 (8 again when the last anneals)


class Recorder(L.LightningModule):
    """A linear classifier over indexed samples ``(id, x, y)``; it records, per training step,
    the epoch, batch index, sample ids and learning rate, and the losses its step computed."""

    def __init__(
        self,
        mode: str = "reuse",
        policy: ss.Policy | None = None,
        workers: int = 0,
        raw_loss: bool = False,
        **sift_kwargs: Any,
    ) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, 4, generator=g)
        self.data = ss.IndexedDataset(TensorDataset(x, (x[:, 0] > 0).long()))
        self.mode, self.workers, self.raw_loss = mode, workers, raw_loss
        self.policy = ss.TopK(0.5) if policy is None else policy
        self.sift_kwargs = sift_kwargs
        self.steps: list[tuple[int, int, list[int], float]] = []
        self.losses: dict[int, float] = {}  # the last loss each id's training step computed
        self.weights: list[tuple[list[int], list[float]]] = []  # returned / unweighted losses
        self.sizes: list[float] = []  # trainer.num_training_batches at each epoch start
        self.bar_totals: list[float] = []  # the progress bar's total at each epoch start
        self.validations = 0

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        _, x, y = batch
        return F.cross_entropy(self.net(x), y, reduction="none")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids = batch[0].tolist()
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.steps.append((self.current_epoch, batch_idx, ids, lr))
        if self.raw_loss:  # the plain loss, not through per_sample_loss: nothing is recorded
            _, x, y = batch
            return F.cross_entropy(self.net(x), y)
        losses = self.per_sample_loss(batch)
        unweighted = type(self).per_sample_loss(self, batch).detach()  # the class's own method
        self.losses.update(zip(ids, unweighted.tolist(), strict=True))
        self.weights.append((ids, (losses.detach() / unweighted).tolist()))
        return losses.mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def on_train_epoch_start(self) -> None:
        self.sizes.append(self.trainer.num_training_batches)
        bar = self.trainer.progress_bar_callback
        if bar is not None:
            self.bar_totals.append(bar.train_progress_bar.total)

    def train_dataloader(self) -> Any:
        loader = DataLoader(
            self.data,
            batch_size=BATCH,
            shuffle=True,
            generator=torch.Generator().manual_seed(1),  # a seeded shuffle resumes exactly
            num_workers=self.workers,
        )
        return sift_dataloader(self, loader, self.policy, mode=self.mode, **self.sift_kwargs)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(8, 4)), batch_size=8)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        plain_total = REUSE_EPOCHS * plain_steps_per_epoch(N, BATCH, self.trainer.world_size)
        linear = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / plain_total)
        per_epoch = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return [optimizer], [
            {"scheduler": linear, "interval": "step"},
            {"scheduler": per_epoch, "interval": "epoch"},
        ]


class SaveAt(L.Callback):
    """Saves a checkpoint once ``global_step`` reaches ``step`` (at a batch's end), or at the
    end of epoch ``epoch``."""

    def __init__(self, path: Path, step: int | None = None, epoch: int | None = None) -> None:
        self.path, self.step, self.epoch = path, step, epoch

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)

    def on_train_epoch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def reuse_fit(
    model: Recorder,
    callbacks: list[Any] | None = None,
    ckpt_path: Path | None = None,
    **kwargs: Any,
) -> tuple[Any, MemoryLogger]:
    extra = [] if callbacks is None else callbacks
    settings = {"max_epochs": REUSE_EPOCHS, **kwargs}
    return fit(model, [SiftingCallback(), *extra], ckpt_path, **settings)


def trained_by_epoch(model: Recorder) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for epoch, _, ids, _ in model.steps:
        out.setdefault(epoch, []).extend(ids)
    return out


def test_loss_reuse_trains_fewer_samples_after_the_first_epoch_each_id_once_per_epoch() -> None:
    audit = ss.SiftAudit(id_key=0)
    model = Recorder(audit=audit)
    trainer, logger = reuse_fit(model, enable_progress_bar=True)
    sifted = trainer.train_dataloader
    assert isinstance(sifted, ReuseTrainLoader)
    trained = trained_by_epoch(model)
    assert [len(trained[e]) for e in range(REUSE_EPOCHS)] == [N, N // 2, N // 2]
    for epoch in range(REUSE_EPOCHS):  # trained or skipped, each id exactly once
        skipped = audit.epoch(epoch).sifted.tolist()
        assert sorted(trained[epoch] + skipped) == list(range(N)), f"epoch {epoch}"
    assert trainer.global_step == 8 + 4 + 4
    # Lightning sized each epoch by its own length (the progress bar's total), validated at
    # every epoch's end, and stepped the epoch-interval schedule once per epoch.
    assert model.sizes == model.bar_totals == [8, 4, 4]
    assert model.validations == REUSE_EPOCHS
    step, epoch = schedules(trainer)
    assert epoch.last_epoch == REUSE_EPOCHS
    # The step schedule, sized for plain training, ended where training ended.
    assert step.last_epoch == REUSE_EPOCHS * plain_steps_per_epoch(N, BATCH)
    assert step.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert [lr for *_, lr in model.steps][:8] == [0.1 * (1 - s / 24) for s in range(8)]
    # The decision's stats, logged as smartsift/<name>.
    assert logger.column("smartsift/keep_rate")[-1] == 0.5 == sifted.stats.keep_rate
    assert logger.column("smartsift/trained")[-1] == N // 2
    assert logger.column("smartsift/candidates")[-1] == N
    assert not any("smartsift/decided_keep_rate" in m for _, m in logger.rows[:8])  # NaN left out


def test_loss_reuse_records_the_training_steps_own_losses_and_gives_the_method_back() -> None:
    model = Recorder()
    trainer, _ = reuse_fit(model)
    table = trainer.train_dataloader.table
    ids = sorted(model.losses)
    assert ids == list(range(N))
    expected = np.array([model.losses[i] for i in ids], dtype=table.losses.dtype)
    assert np.array_equal(table.losses[ids], expected)
    assert table.updates == trainer.global_step  # one record per step, no second forward
    assert all(w == 1.0 for _, weights in model.weights for w in weights)  # rescale off
    assert "per_sample_loss" not in vars(model)  # the class's method again after fit


def test_loss_reuse_hands_training_step_the_loaders_own_batches() -> None:
    def as_dict(samples: list[Any]) -> dict[str, torch.Tensor]:  # a user's own collate_fn
        ids, x, y = (torch.stack([torch.as_tensor(s[i]) for s in samples]) for i in range(3))
        return {"ids": ids, "x": x, "y": y}

    class DictBatches(Recorder):
        train_dataloader = L.LightningModule.train_dataloader  # the hook left undefined

        def per_sample_loss(self, batch: Any) -> torch.Tensor:
            return F.cross_entropy(self.net(batch["x"]), batch["y"], reduction="none")

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.steps.append((self.current_epoch, batch_idx, batch["ids"].tolist(), 0.0))
            return self.per_sample_loss(batch).mean()

    model = DictBatches()
    plain = DataLoader(model.data, batch_size=BATCH, collate_fn=as_dict)
    sifted = sift_dataloader(model, plain, ss.TopK(0.5), mode="reuse")
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, callbacks=[SiftingCallback()],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, train_dataloaders=sifted)
    # The first epoch trains every batch as the plain loader makes it, ids and all.
    assert [ids for e, _, ids, _ in model.steps if e == 0] == [b["ids"].tolist() for b in plain]
    assert len([e for e, *_ in model.steps if e == 1]) == 4 and trainer.global_step == 12


def test_loss_reuse_with_rescale_returns_the_weighted_losses() -> None:
    model = Recorder(policy=ss.RelativeProbabilistic(keep=0.5), rescale=True)
    trainer, _ = reuse_fit(model, max_epochs=2)
    sampler = trainer.train_dataloader.sampler
    later = [
        (ids, w)
        for (epoch, *_), (ids, w) in zip(model.steps, model.weights, strict=True)
        if epoch == 1
    ]
    assert later
    for ids, weights in later:  # the ratio of returned to unweighted loss: the sampler's weight
        expected = sampler.weights(torch.tensor(ids)).tolist()
        assert weights == pytest.approx(expected, rel=1e-5)
    assert any(w > 1.0 for _, weights in later for w in weights)  # 1/p for kept samples


def test_loss_reuse_refuses_what_it_cannot_do() -> None:
    model = Recorder()
    loader = DataLoader(model.data, batch_size=BATCH)
    with pytest.raises(TypeError, match="loss_fn"):
        sift_dataloader(model, loader, mode="reuse", loss_fn=lambda m, b: b)
    with pytest.raises(TypeError, match="sift_delay"):
        sift_dataloader(model, loader, mode="reuse", sift_delay=2)
    with pytest.raises(TypeError, match="`batch_size`=8, which only the scoring pass takes"):
        sift_dataloader(model, loader, mode="reuse", batch_size=8)
    with pytest.raises(TypeError, match=r"`epochs`=3, which loss reuse sets .*max_epochs"):
        sift_dataloader(model, loader, mode="reuse", epochs=3)
    with pytest.raises(TypeError, match="did you mean `rescale`"):
        sift_dataloader(model, loader, mode="reuse", rescal=True)
    with pytest.raises(
        TypeError, match=r"`rescale`=True, which only loss reuse takes.*mode='reuse'"
    ):
        sift_dataloader(model, loader, rescale=True)
    with pytest.raises(ValueError, match=r"`mode`.*'scoring', 'reuse'.*'reusing'"):
        sift_dataloader(model, loader, mode="reusing")
    with pytest.raises(ValueError, match="needs no labels"):
        guarded = ss.Guarded(ss.TopK(0.5), class_floor=0.5, label_key=2)
        sift_dataloader(model, loader, guarded, mode="reuse")
    with pytest.raises(ValueError, match="max_age"):
        sift_dataloader(model, loader, mode="reuse", max_age=-1)
    with pytest.raises(TypeError, match="map-style dataset, with a batch_size"):
        sift_dataloader(model, [1, 2], mode="reuse")
    with pytest.raises(TypeError, match="map-style dataset, with a batch_size"):
        sift_dataloader(model, DataLoader(model.data, batch_size=None), mode="reuse")

    class NoLoss(L.LightningModule):
        pass

    with pytest.raises(TypeError, match=r"per_sample_loss.*for loss reuse, which records"):
        sift_dataloader(NoLoss(), loader, mode="reuse")


def test_loss_reuse_refuses_a_step_that_records_nothing_and_a_trainer_without_callback() -> None:
    with pytest.raises(RuntimeError, match=r"ended without a call to `self\.per_sample_loss"):
        reuse_fit(Recorder(raw_loss=True))
    with pytest.raises(RuntimeError, match="needs the SiftingCallback"):
        fit(Recorder(), callbacks=[])
    model = Recorder()
    model.per_sample_loss = lambda batch: torch.zeros(3)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"one loss per sample, a tensor of shape \(16,\)"):
        reuse_fit(model)
    assert vars(model)["per_sample_loss"](None).shape == (3,)  # its own attribute given back


def resume_runs(
    mode: str, save: dict[str, int], tmp_path: Path, **model_kwargs: Any
) -> tuple[Recorder, Recorder, Any, Any]:
    """An uninterrupted fit that saves a checkpoint on the way, and a second fit from it."""
    path = tmp_path / "sifted.ckpt"
    whole = Recorder(mode, **model_kwargs)
    first, _ = reuse_fit(whole, callbacks=[SaveAt(path, **save)])
    resumed = Recorder(mode, **model_kwargs)
    trainer, _ = reuse_fit(resumed, ckpt_path=path)
    return whole, resumed, first, trainer


def assert_resumed_exactly(whole: Recorder, resumed: Recorder) -> None:
    """The resumed fit trained the ids, in order, at the learning rates the whole one did."""
    assert resumed.steps, "the resumed fit trained nothing"
    tail = whole.steps[len(whole.steps) - len(resumed.steps) :]
    assert [ids for *_, ids, _ in resumed.steps] == [ids for *_, ids, _ in tail]
    assert [lr for *_, lr in resumed.steps] == [lr for *_, lr in tail]
    assert [(e, b) for e, b, *_ in resumed.steps] == [(e, b) for e, b, *_ in tail]
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("mode", "save"),
    [
        ("reuse", {"step": 10}),  # epoch 1, after its batch 1 of 4
        ("scoring", {"step": 5}),  # epoch 1, after its batch 0 of 4: the next one pre-fetched
    ],
)
def test_a_run_resumed_mid_epoch_from_lightnings_checkpoint_trains_exactly_the_same(
    mode: str, save: dict[str, int], workers: int, tmp_path: Path
) -> None:
    # Reuse: the last epoch anneals (trains all 8 batches), longer than the resumed epoch's 4.
    kwargs: dict[str, Any] = {"anneal": 0.25} if mode == "reuse" else {}
    whole, resumed, first, trainer = resume_runs(mode, save, tmp_path, workers=workers, **kwargs)
    assert len(whole.steps) - len(resumed.steps) == save["step"]
    assert_resumed_exactly(whole, resumed)
    assert trainer.global_step == first.global_step
    assert resumed.validations == REUSE_EPOCHS - 1  # the resumed epoch's end, and the last
    step, _ = schedules(trainer)
    assert step.last_epoch == REUSE_EPOCHS * plain_steps_per_epoch(N, BATCH)
    a, b = first.train_dataloader, trainer.train_dataloader
    if mode == "reuse":
        assert resumed.sizes == [8]  # the last epoch, sized anew: not cut to the resumed 4
        assert [len(v) for v in trained_by_epoch(whole).values()] == [N, N // 2, N]
        assert a.sampler.epoch_stats == b.sampler.epoch_stats
        assert np.array_equal(a.table.losses, b.table.losses)
    else:
        # The restored loader's counters carried on: they end as the uninterrupted one's.
        assert a.stats.samples_seen == b.stats.samples_seen == REUSE_EPOCHS * N
        assert (a.stats.steps, a.stats.samples_trained) == (b.stats.steps, b.stats.samples_trained)


@pytest.mark.parametrize("mode", ["reuse", "scoring"])
def test_a_run_resumed_from_an_epochs_end_trains_exactly_the_same(
    mode: str, tmp_path: Path
) -> None:
    whole, resumed, _, _ = resume_runs(mode, {"epoch": 0}, tmp_path)
    assert resumed.steps[0][:2] == (1, 0)
    assert_resumed_exactly(whole, resumed)


class Estimating(Recorder):
    """Reads ``estimated_stepping_batches`` in ``configure_optimizers``: Lightning then sets the
    data up (reuse: asks the length; scoring: pre-fetches a batch) before it restores its own
    counters from a checkpoint."""

    def configure_optimizers(self) -> Any:
        self.estimated = self.trainer.estimated_stepping_batches
        return super().configure_optimizers()


@pytest.mark.parametrize(("mode", "step"), [("reuse", 10), ("scoring", 5)])
def test_a_resume_is_exact_when_the_data_is_set_up_before_lightning_restores(
    mode: str, step: int, tmp_path: Path
) -> None:
    path = tmp_path / "early.ckpt"
    whole = Estimating(mode)
    reuse_fit(whole, callbacks=[SaveAt(path, step=step)])
    resumed = Estimating(mode)
    reuse_fit(resumed, ckpt_path=path)
    assert_resumed_exactly(whole, resumed)
    # Reuse: the plain run's steps at the start; from the resumed epoch's length on a resume.
    expected = (REUSE_EPOCHS * 8, REUSE_EPOCHS * 4) if mode == "reuse" else (-1, -1)
    assert (whole.estimated, resumed.estimated) == expected


def test_a_checkpoint_resumes_only_in_its_own_mode(tmp_path: Path) -> None:
    path = tmp_path / "scoring.ckpt"
    reuse_fit(Recorder("scoring"), callbacks=[SaveAt(path, step=2)], max_epochs=1)
    with pytest.raises(ValueError, match=r"mode='scoring'.*runs mode='reuse'"):
        reuse_fit(Recorder("reuse"), ckpt_path=path)


# ------------------------------------------------------------------ DDP (2 CPU processes)
@pytest.mark.parametrize("mode", ["scoring", "reuse"])
def test_the_example_trains_in_lockstep_under_ddp_and_sees_every_sample_once(
    mode: str, tmp_path: Path
) -> None:
    samples, epochs = 1000, 2  # 800 training samples: 400 per rank
    cmd = [
        sys.executable,
        str(EXAMPLES / "lightning_train.py"),
        f"--mode={mode}",
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
    returncode, out = run_session(cmd, env, DDP_TIMEOUT_S, "the DDP run", cwd=tmp_path)
    assert returncode == 0, out
    reports = [json.loads((tmp_path / f"report.rank{r}.json").read_text()) for r in range(2)]
    steps = [r["global_step"] for r in reports]
    assert steps[0] == steps[1] > 0, out  # lockstep: the same optimizer steps on both ranks
    for report in reports:
        assert report["mode"] == mode and report["epochs"] == epochs
        assert report["scheduler_steps"] == report["scheduler_total"] == epochs * 13
        if mode == "scoring":
            stats = report["stats"]
            assert stats["epochs"] == epochs and stats["steps"] == report["global_step"]
            assert stats["samples_seen"] == epochs * 400
            assert stats["samples_passed"] < stats["samples_kept"] < stats["samples_seen"]
    for epoch in range(epochs):  # the ranks' shares: every sample once per epoch
        ids = [i for r in reports for i in r["seen_ids"][str(epoch)]]
        if mode == "scoring":
            assert sorted(ids) == list(range(800)), f"epoch {epoch}"
        else:  # trained or skipped; a share evened out by repeating a few
            decided = reports[0]["epoch_stats"][str(epoch)]
            assert sorted(set(ids)) == list(range(800)), f"epoch {epoch}"
            assert len(ids) == 800 + decided["padded"]
    if mode == "reuse":
        later = reports[0]["epoch_stats"]["1"]
        assert 0 < later["trained"] < 800 and steps[0] < epochs * 13
    # Rank 0 logged the stats (CSVLogger).
    (csv,) = (tmp_path / "logs").rglob("metrics.csv")
    header, *rows = [line.split(",") for line in csv.read_text().splitlines()]
    name = "smartsift/samples_seen" if mode == "scoring" else "smartsift/candidates"
    column = header.index(name)
    logged = [float(row[column]) for row in rows if row[column]]
    if mode == "scoring":  # summed over both ranks: more than one rank sees
        assert logged and epochs * 400 < max(logged) <= epochs * 800
    else:  # the decision over both ranks' candidates
        assert logged and max(logged) == 800


def _ddp_resume_job(rank: int, world_size: int, mode: str, folder: str) -> dict[str, Any]:
    """On each of 2 gloo ranks: a whole fit under strategy="ddp" that saves a checkpoint at
    step 5, then a second fit resumed from it."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    L.seed_everything(0, verbose=False)
    path = Path(folder) / "ddp.ckpt"
    settings: dict[str, Any] = dict(
        max_epochs=REUSE_EPOCHS,
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        logger=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    audit = ss.SiftAudit(id_key=0)
    kwargs: dict[str, Any] = {"audit": audit} if mode == "reuse" else {}
    whole = Recorder(mode, **kwargs)
    first = L.Trainer(callbacks=[SiftingCallback(), SaveAt(path, step=5)], **settings)
    first.fit(whole)
    resumed = Recorder(mode)
    second = L.Trainer(callbacks=[SiftingCallback()], **settings)
    second.fit(resumed, ckpt_path=path, weights_only=True)
    out: dict[str, Any] = {"whole": whole.steps, "resumed": resumed.steps}
    out["global_step"] = [first.global_step, second.global_step]
    out["weights_equal"] = all(
        torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters(), strict=True)
    )
    if mode == "reuse":
        tables = [t.train_dataloader.table for t in (first, second)]
        for table in tables:
            getattr(table, "sync", lambda: None)()  # rows a rank buffers: every rank's in
        out["tables"] = [table.losses.tolist() for table in tables]
        out["sifted"] = {e: audit.epoch(e).sifted.tolist() for e in audit.epochs}
        out["stats"] = first.train_dataloader.sampler.epoch_stats  # ReuseEpochStats by epoch
    return out


@pytest.fixture(scope="module", params=["reuse", "scoring"])
def ddp_runs(request: Any, tmp_path_factory: Any) -> tuple[str, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp(f"ddp-{request.param}")
    return request.param, run_ranks(
        _ddp_resume_job, 2, request.param, str(folder), timeout=DDP_TIMEOUT_S
    )


def test_under_ddp_the_ranks_take_equal_steps_and_reuse_keeps_one_table(
    ddp_runs: tuple[str, list[dict[str, Any]]],
) -> None:
    mode, ranks = ddp_runs
    assert ranks[0]["global_step"] == ranks[1]["global_step"]  # lockstep, in both fits
    if mode == "scoring":
        return
    assert ranks[0]["global_step"][0] == 4 + 2 + 2  # 64 samples per rank, then 32
    assert ranks[0]["tables"] == ranks[1]["tables"]  # every rank recorded every rank's losses
    assert ranks[0]["stats"] == ranks[1]["stats"]
    for epoch in range(REUSE_EPOCHS):  # the ranks' shares: each id trained or skipped once
        trained = [i for r in ranks for e, _, ids, _ in r["whole"] if e == epoch for i in ids]
        skipped = [i for r in ranks for i in r["sifted"][epoch]]
        assert sorted(trained + skipped) == list(range(N)), f"epoch {epoch}"
    assert len(trained) == N // 2


def test_under_ddp_every_rank_resumes_exactly_from_the_one_checkpoint(
    ddp_runs: tuple[str, list[dict[str, Any]]],
) -> None:
    _, ranks = ddp_runs
    for rank in ranks:
        whole, resumed = rank["whole"], rank["resumed"]
        assert len(whole) - len(resumed) == 5
        assert resumed == whole[5:]  # epochs, batch indices, ids and learning rates
        assert rank["weights_equal"]
    assert ranks[0]["resumed"] != ranks[1]["resumed"]  # each rank its own share
