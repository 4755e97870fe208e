"""Schedules that follow the data: every scheduler ends where plain training ends, never beyond.

Each sifted run trains a tiny model through a real ``SiftingDataLoader`` over a real
``DataLoader`` and steps its scheduler through ``DataSchedule``; the reference is the same
scheduler stepped once per batch of plain training at the refined batch size.
"""

from __future__ import annotations

import io
import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim import lr_scheduler as lrs
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import smartsift as ss
from smartsift.modes.schedules import DataSchedule, plain_steps

N, FEATURES, EPOCHS, LR = 200, 6, 3, 0.1
MakeScheduler = Callable[[torch.optim.Optimizer, int, int], Any]


def ce_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def dataset(n: int = N) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, FEATURES, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _transformers(name: str) -> Any:
    optimization = pytest.importorskip("transformers.optimization")
    return getattr(optimization, name)


# Each factory gets (optimizer, total plain steps, plain steps per epoch).
SCHEDULERS: dict[str, MakeScheduler] = {
    "cosine": lambda opt, total, _: lrs.CosineAnnealingLR(opt, T_max=total, eta_min=1e-3),
    "onecycle": lambda opt, total, _: lrs.OneCycleLR(opt, max_lr=LR, total_steps=total),
    "linear_warmup": lambda opt, total, per_epoch: _transformers("get_linear_schedule_with_warmup")(
        opt, num_warmup_steps=per_epoch // 2, num_training_steps=total
    ),
    "cosine_warmup": lambda opt, total, per_epoch: _transformers("get_cosine_schedule_with_warmup")(
        opt, num_warmup_steps=per_epoch // 2, num_training_steps=total
    ),
    "step": lambda opt, total, per_epoch: lrs.StepLR(opt, step_size=per_epoch, gamma=0.5),
    "multistep": lambda opt, total, _: lrs.MultiStepLR(
        opt, milestones=[total // 2, 3 * total // 4], gamma=0.1
    ),
    "warmup_then_cosine": lambda opt, total, per_epoch: lrs.SequentialLR(
        opt,
        [
            lrs.LinearLR(opt, start_factor=0.1, total_iters=per_epoch),
            lrs.CosineAnnealingLR(opt, T_max=total - per_epoch),
        ],
        milestones=[per_epoch],
    ),
}

# (policy, sift_delay in raw batches or "epoch", repeat_delay_per_epoch)
POLICIES: dict[str, tuple[ss.Policy, int | str, bool]] = {
    "topk0.3": (ss.TopK(0.3), 0, False),
    "beta1_delay_epoch": (ss.RelativeProbabilistic(beta=1.0, history=64), "epoch", False),
    "beta1_repeat_delay": (ss.RelativeProbabilistic(beta=1.0, history=64), 3, True),
}


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, 2)


def plain_lrs(make: MakeScheduler, total: int, per_epoch: int) -> list[float]:
    """The learning rate after 0, 1, ..., ``total`` steps of plain training."""
    opt = torch.optim.SGD(make_model().parameters(), lr=LR)
    sched = make(opt, total, per_epoch)
    out = [sched.get_last_lr()[0]]
    for _ in range(total):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def sifted_loader(
    model: torch.nn.Module,
    policy: ss.Policy,
    raw_bs: int,
    bs: int,
    delay: int | str = 0,
    repeat: bool = False,
    data: TensorDataset | None = None,
) -> ss.SiftingDataLoader:
    raw = DataLoader(
        data or dataset(),
        batch_size=raw_bs,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )
    return ss.SiftingDataLoader(
        raw,
        model,
        ce_loss,
        policy=policy,
        sift_delay=len(raw) if delay == "epoch" else int(delay),
        repeat_delay_per_epoch=repeat,
        batch_size=bs,
        seed=0,
    )


def train(
    loader: ss.SiftingDataLoader,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    schedule: DataSchedule,
    epochs: int,
) -> list[tuple[int, float]]:
    """Trains ``epochs`` epochs; returns (scheduler steps taken, lr) after every step."""
    record = []
    for _ in range(epochs):
        for batch in loader:
            loss = ce_loss(model, batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            record.append((schedule.steps, schedule.get_last_lr()[0]))
    return record


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("raw_bs", [16, 32])
@pytest.mark.parametrize("sched_name", list(SCHEDULERS))
def test_schedule_ends_where_plain_training_ends(
    sched_name: str, raw_bs: int, policy_name: str
) -> None:
    bs = 16
    per_epoch = len(DataLoader(dataset(), batch_size=bs))  # 13: the last batch is partial
    total = EPOCHS * per_epoch
    make = SCHEDULERS[sched_name]
    reference = plain_lrs(make, total, per_epoch)
    policy, delay, repeat = POLICIES[policy_name]
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = make(opt, total, per_epoch)
    loader = sifted_loader(model, policy, raw_bs, bs, delay, repeat)
    schedule = DataSchedule(scheduler, loader)
    assert schedule.steps_per_epoch == per_epoch

    record = train(loader, model, opt, schedule, EPOCHS)

    assert loader.stats.steps < total  # sifting took fewer optimizer steps than plain training
    assert scheduler.last_epoch == total == schedule.steps  # exactly to the end, not beyond
    assert schedule.get_last_lr()[0] == pytest.approx(reference[-1], rel=1e-9, abs=1e-12)
    steps = [s for s, _ in record]
    assert steps == sorted(steps)
    # Every learning rate used is the plain schedule's at the data seen: the same trajectory,
    # so it is monotone wherever the plain schedule is.
    assert [lr for _, lr in record] == pytest.approx([reference[s] for s in steps], rel=1e-9)
    if sched_name == "cosine":
        lrs_used = [lr for _, lr in record]
        assert all(b <= a for a, b in itertools.pairwise(lrs_used))
        assert reference[-1] == pytest.approx(1e-3)


def test_without_the_adapter_a_sifted_cosine_never_finishes() -> None:
    """The problem this module solves, kept honest: one scheduler step per optimizer step."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    total = EPOCHS * len(DataLoader(dataset(), batch_size=16))
    scheduler = lrs.CosineAnnealingLR(opt, T_max=total)
    loader = sifted_loader(model, ss.TopK(0.3), 16, 16)
    for _ in range(EPOCHS):
        for batch in loader:
            opt.zero_grad()
            ce_loss(model, batch).mean().backward()
            opt.step()
            scheduler.step()
    assert scheduler.get_last_lr()[0] > 0.5 * LR


def test_without_sifting_it_steps_once_per_batch_like_plain_training() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    per_epoch = len(DataLoader(dataset(), batch_size=16))
    make = SCHEDULERS["onecycle"]
    scheduler = make(opt, 2 * per_epoch, per_epoch)
    loader = sifted_loader(model, ss.TopK(0.3), 16, 16, delay=10**9)
    schedule = DataSchedule(scheduler, loader)
    record = train(loader, model, opt, schedule, 2)
    assert [s for s, _ in record] == list(range(1, 2 * per_epoch + 1))
    reference = plain_lrs(make, 2 * per_epoch, per_epoch)
    assert [lr for _, lr in record] == pytest.approx(reference[1:], rel=1e-12)


@pytest.mark.parametrize("policy", [ss.TopK(0.3), ss.Uniform(0.8), ss.TopK(1.0)])
def test_onecycle_never_steps_past_its_end(policy: ss.Policy) -> None:
    """Sized for plain training (or too short), trained longer: it stops at its own end."""
    per_epoch = len(DataLoader(dataset(), batch_size=16))
    for total in (EPOCHS * per_epoch, EPOCHS * per_epoch - 5):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        scheduler = lrs.OneCycleLR(opt, max_lr=LR, total_steps=total)
        loader = sifted_loader(model, policy, 16, 16)
        schedule = DataSchedule(scheduler, loader)
        train(loader, model, opt, schedule, EPOCHS + 1)  # one epoch more than it was sized for
        assert scheduler.last_epoch == total == schedule.steps


def test_total_steps_clamps_a_scheduler_that_does_not_know_its_end() -> None:
    per_epoch = len(DataLoader(dataset(), batch_size=16))
    total = EPOCHS * per_epoch
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = lrs.CosineAnnealingLR(opt, T_max=total)  # would rise again past T_max
    loader = sifted_loader(model, ss.TopK(0.5), 16, 16)
    schedule = DataSchedule(scheduler, loader, total_steps=total)
    record = train(loader, model, opt, schedule, EPOCHS + 1)
    assert scheduler.last_epoch == total
    assert record[-1][1] == pytest.approx(0.0, abs=1e-12)


def test_raw_batch_unit() -> None:
    """Sized in raw batches of the wrapped loader: pass its batch size."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = sifted_loader(model, ss.TopK(0.3), 32, 16)
    raw_per_epoch = len(loader.dataloader)  # type: ignore[arg-type]
    scheduler = lrs.CosineAnnealingLR(opt, T_max=EPOCHS * raw_per_epoch)
    schedule = DataSchedule(scheduler, loader, batch_size=32)
    assert schedule.steps_per_epoch == raw_per_epoch == 7
    train(loader, model, opt, schedule, EPOCHS)
    assert scheduler.last_epoch == EPOCHS * raw_per_epoch
    assert schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def _save(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _build(sched_name: str) -> tuple[Any, ...]:
    per_epoch = len(DataLoader(dataset(), batch_size=16))
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    scheduler = SCHEDULERS[sched_name](opt, EPOCHS * per_epoch, per_epoch)
    loader = sifted_loader(model, ss.RelativeProbabilistic(beta=1.0, history=64), 32, 16, 2)
    return model, opt, scheduler, loader, DataSchedule(scheduler, loader)


@pytest.mark.parametrize("sched_name", ["onecycle", "warmup_then_cosine"])
def test_resume_mid_epoch_continues_exactly(sched_name: str) -> None:
    model, opt, _, loader, schedule = _build(sched_name)
    uninterrupted = train(loader, model, opt, schedule, EPOCHS)

    model, opt, scheduler, loader, schedule = _build(sched_name)
    first = train(loader, model, opt, schedule, 1)
    it = iter(loader)
    for _ in range(4):  # into the second epoch, then stop with the iterator suspended
        batch = next(it)
        opt.zero_grad()
        ce_loss(model, batch).mean().backward()
        opt.step()
        schedule.step()
        first.append((schedule.steps, schedule.get_last_lr()[0]))
    saved = _save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(),
            "schedule": schedule.state_dict(),
        }
    )
    it.close()

    model, opt, scheduler, loader, schedule = _build(sched_name)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    scheduler.load_state_dict(saved["scheduler"])
    loader.load_state_dict(saved["loader"])
    schedule.load_state_dict(saved["schedule"])
    rest = train(loader, model, opt, schedule, EPOCHS - 1)  # the rest of epoch 2, then epoch 3

    assert [s for s, _ in first + rest] == [s for s, _ in uninterrupted]
    assert [lr for _, lr in first + rest] == pytest.approx([lr for _, lr in uninterrupted])
    assert scheduler.last_epoch == schedule.steps == EPOCHS * 13


def test_plain_steps_counts_epochs_as_plain_training_does() -> None:
    for n in (1, 7, 64, 100, 200):
        for bs in (1, 3, 16, 64, 128):
            per_epoch = len(DataLoader(range(n), batch_size=bs))
            counts = [plain_steps(s, bs, n) for s in range(3 * n + 1)]
            assert counts[n] == per_epoch and counts[3 * n] == 3 * per_epoch
            assert counts == sorted(counts)  # never goes back
            assert counts[n - 1] == (n - 1) // bs
    assert plain_steps(1000, 64) == 15


def test_samples_per_epoch_is_inferred_per_rank_and_after_drop_last() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sched = lrs.StepLR(opt, step_size=1)
    data = dataset()
    cases = {
        DataLoader(data, batch_size=32): N,
        DataLoader(data, batch_size=32, drop_last=True): 192,
        DataLoader(data, batch_size=32, sampler=DistributedSampler(data, 3, 0)): 67,
    }
    for raw, expected in cases.items():
        loader = ss.SiftingDataLoader(raw, model, ce_loss, policy=ss.TopK(0.5), batch_size=16)
        assert DataSchedule(sched, loader).samples_per_epoch == expected


def test_a_loader_of_unknown_size_warns_and_counts_a_stream() -> None:
    data = dataset()
    batches = [(data.tensors[0][i : i + 20], data.tensors[1][i : i + 20]) for i in range(0, N, 20)]
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = lrs.CosineAnnealingLR(opt, T_max=2 * 10)
    loader = ss.SiftingDataLoader(batches, model, ce_loss, policy=ss.TopK(0.3), seed=0)
    with pytest.warns(UserWarning, match="samples_per_epoch"):
        schedule = DataSchedule(scheduler, loader)
    assert schedule.samples_per_epoch is None and schedule.steps_per_epoch is None
    train(loader, model, opt, schedule, 2)  # 20 divides an epoch: the ends are exact anyway
    assert scheduler.last_epoch == 20

    given = DataSchedule(lrs.StepLR(opt, 1), loader, samples_per_epoch=N)
    assert given.steps_per_epoch == 10


def test_wrong_samples_per_epoch_warns_once_and_never_crashes() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = lrs.OneCycleLR(opt, max_lr=LR, total_steps=30)
    loader = sifted_loader(model, ss.TopK(0.3), 16, 16)
    schedule = DataSchedule(scheduler, loader, samples_per_epoch=120)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(loader, model, opt, schedule, EPOCHS)
    messages = [str(w.message) for w in caught if "samples_per_epoch" in str(w.message)]
    assert len(messages) == 1 and "120" in messages[0]
    assert scheduler.last_epoch == 30


def test_adapter_made_after_training_started_owes_nothing_for_past_data() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = sifted_loader(model, ss.TopK(0.3), 16, 16)
    for _ in loader:
        pass
    scheduler = lrs.CosineAnnealingLR(opt, T_max=13)
    schedule = DataSchedule(scheduler, loader)
    assert schedule.step() == 0 and scheduler.last_epoch == 0
    train(loader, model, opt, schedule, 1)
    assert scheduler.last_epoch == 13


def test_bad_arguments_are_named() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = sifted_loader(model, ss.TopK(0.3), 16, 16)
    sched = lrs.StepLR(opt, step_size=1)
    with pytest.raises(TypeError, match="ReduceLROnPlateau"):
        DataSchedule(lrs.ReduceLROnPlateau(opt), loader)
    with pytest.raises(TypeError, match="`scheduler`"):
        DataSchedule(object(), loader)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`loader`"):
        DataSchedule(sched, DataLoader(dataset()))  # type: ignore[arg-type]
    for kwargs in ({"batch_size": 0}, {"samples_per_epoch": 1.5}, {"total_steps": -1}):
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"`{name}`"):
            DataSchedule(sched, loader, **kwargs)  # type: ignore[arg-type]
    schedule = DataSchedule(sched, loader)
    state = schedule.state_dict()
    with pytest.raises(ValueError, match="`samples_per_epoch`"):
        DataSchedule(sched, loader, samples_per_epoch=100).load_state_dict(state)


# ----------------------------------------------------------------------------- DDP (gloo)
def _ddp_worker(rank: int, world_size: int) -> dict[str, Any]:
    """Each rank trains on its own share; returns its learning rates per step per policy."""
    torch.set_num_threads(1)
    data = dataset(203)  # uneven: the sampler pads every rank to the same count
    out: dict[str, Any] = {}
    for name, policy in (("topk", ss.TopK(0.3)), ("beta1", ss.RelativeProbabilistic(1.0))):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=0)
        raw = DataLoader(data, batch_size=16, sampler=sampler)
        per_epoch = len(raw)
        scheduler = lrs.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * per_epoch)
        loader = ss.SiftingDataLoader(raw, model, ce_loss, policy=policy, seed=0)
        schedule = DataSchedule(scheduler, loader)
        lrs_used = []
        for epoch in range(EPOCHS):
            loader.set_epoch(epoch)
            for batch in loader:
                opt.zero_grad()
                ce_loss(model, batch).mean().backward()
                opt.step()
                schedule.step()
                lrs_used.append(schedule.get_last_lr()[0])
        out[name] = (lrs_used, scheduler.last_epoch, EPOCHS * per_epoch)
    out["reuse"] = _ddp_reuse(data, rank, world_size)
    return out


def _ddp_reuse(data: Any, rank: int, world_size: int) -> tuple[list[float], int, int]:
    """Loss reuse on every rank's share: one shared table, one schedule per rank."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=0)
    per_epoch = len(DataLoader(data, batch_size=16, sampler=sampler))
    scheduler = lrs.OneCycleLR(opt, max_lr=LR, total_steps=EPOCHS * per_epoch)
    table = ss.ScoreTable(len(data))
    reuse = ss.ReuseSampler(sampler, table, ss.TopK(0.3), max_age=None)
    loader = DataLoader(ss.IndexedDataset(data), batch_size=16, sampler=reuse)
    schedule = ss.ReuseSchedule(scheduler, reuse, batch_size=16)
    lrs_used = []
    for epoch in range(EPOCHS):
        reuse.set_epoch(epoch)
        for ids, x, y in loader:
            per_sample = ce_loss(model, (x, y))
            table.update(ids, per_sample)
            opt.zero_grad()
            per_sample.mean().backward()
            opt.step()
            schedule.step()
            lrs_used.append(schedule.get_last_lr()[0])
    return lrs_used, scheduler.last_epoch, EPOCHS * per_epoch


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
def test_ddp_ranks_step_their_schedulers_alike() -> None:
    from _ddp import run_ranks

    results = run_ranks(_ddp_worker, 2, timeout=120)
    for name in ("topk", "beta1", "reuse"):
        (lrs0, last0, total), (lrs1, last1, _) = (r[name] for r in results)
        assert lrs0 == lrs1  # one learning rate on every replica, at every step
        assert last0 == last1 == total
        reference = plain_lrs(SCHEDULERS["onecycle"], total, total // EPOCHS)
        assert lrs0[-1] == pytest.approx(reference[-1], rel=1e-9)
    assert len(results[0]["reuse"][0]) < results[0]["reuse"][2]  # reuse really skipped


# ----------------------------------------------------------------------------- loss reuse
def _reuse_run(
    epochs: int, policy: ss.Policy, scheduler_factory: Any, stop_after: int | None = None
) -> tuple[list[float], ss.ReuseSchedule, ss.ReuseSampler, Any]:
    """Trains a linear model by loss reuse; returns the learning rate after every step."""
    from torch.utils.data import RandomSampler

    data = TensorDataset(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)))
    table = ss.ScoreTable(100)
    sampler = ss.ReuseSampler(
        RandomSampler(data, generator=torch.Generator().manual_seed(1)), table, policy,
        max_age=None,
    )  # fmt: skip
    loader = DataLoader(ss.IndexedDataset(data), sampler=sampler, batch_size=16)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = scheduler_factory(opt, epochs * 7)
    schedule = ss.ReuseSchedule(scheduler, sampler, batch_size=16)
    rates = []
    for _ in range(epochs):
        for ids, x in loader:
            loss = model(x).squeeze(1) ** 2
            table.update(ids, loss.detach())
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            schedule.step()
            rates.append(schedule.get_last_lr()[0])
            if stop_after is not None and len(rates) == stop_after:
                return rates, schedule, sampler, scheduler
    return rates, schedule, sampler, scheduler


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9])
def test_a_reuse_schedule_covers_one_plain_epoch_per_epoch_and_ends_at_its_end(
    keep: float,
) -> None:
    def cosine(opt: Any, n: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)

    rates, schedule, _, _ = _reuse_run(3, ss.TopK(keep), cosine)
    assert schedule.steps_per_epoch == 7  # ceil(100 / 16), as plain training is sized
    assert schedule.steps == 21 and rates[-1] == pytest.approx(0.0, abs=1e-12)
    # Later epochs take fewer steps; each still ends at its plain epoch's end.
    assert len(rates) == 7 + 2 * math.ceil(round(keep * 100) / 16)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(rates))


def test_a_reuse_schedule_never_steps_one_cycle_past_its_end() -> None:
    def one_cycle(opt: Any, n: int) -> Any:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=n)

    _, schedule, _, scheduler = _reuse_run(3, ss.TopK(0.3), one_cycle)
    assert scheduler.last_epoch == 21 == schedule.steps  # OneCycleLR raises beyond its end


def test_a_reuse_schedule_resumes_exactly() -> None:
    def cosine(opt: Any, n: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)

    whole, _, _, _ = _reuse_run(3, ss.TopK(0.5), cosine)
    first, schedule, sampler, scheduler = _reuse_run(3, ss.TopK(0.5), cosine, stop_after=9)
    state = schedule.state_dict()
    fresh = ss.ReuseSchedule(scheduler, sampler, batch_size=16)
    fresh.load_state_dict(state)
    assert fresh.steps == schedule.steps and first == whole[:9]
    # The next step (the 3rd of epoch 1's 4 batches) lands where the uninterrupted run's did.
    fresh.step()
    assert fresh.get_last_lr()[0] == pytest.approx(whole[9])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ss.ReuseSchedule(scheduler, sampler, batch_size=8).load_state_dict(state)


def test_a_reuse_schedule_refuses_what_it_cannot_follow() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    sampler = ss.ReuseSampler(range(10), ss.ScoreTable(10), ss.TopK(0.5))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    with pytest.raises(TypeError, match="scheduler"):
        ss.ReuseSchedule(plateau, sampler, batch_size=2)  # type: ignore[arg-type]
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    with pytest.raises(TypeError, match="ReuseSampler"):
        ss.ReuseSchedule(cosine, range(10), batch_size=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        ss.ReuseSchedule(cosine, sampler, batch_size=0)
