"""Tests of ``ss.Auto``: the decision rule on synthetic signals, the controller's round plan, and
Auto through a real ``SiftingDataLoader`` (plain where scoring is too dear or losses are even,
sifting where it pays, the reason in ``stats`` and the log, exact resume, DDP agreement,
identical decisions whatever the clock says); and the epoch-level judgement loss reuse asks
for (``judge_epoch``), with a fake held-out context."""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _ddp import run_ranks
from _resume import assert_resume_matches
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import smartsift as ss
from smartsift.engine.selector import Selector
from smartsift.engine.stats import conservation_errors, counter_fields
from smartsift.policies.auto import (
    ASSUMED_COST_RATIO,
    MEASURE,
    SCALARS,
    SIFT,
    SKIP,
    AutoController,
    HeldOut,
    held_out_gate,
    judge,
    judge_reuse,
    progress_rate,
    track_best,
)
from smartsift.policies.base import RoundTimes

MODEL = torch.nn.Linear(2, 2)
CHEAP = ss.Auto(ss.TopK(0.5), cost_ratio=0.1)


def _fixed_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, _ = batch
    return x[:, 0].double()


def _data(n: int = 640, concentrated: bool = True, seed: int = 0) -> TensorDataset:
    """Samples whose loss is their first feature: a tenth carry nearly all of it, or all even."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 2)
    if concentrated:
        x[:, 0] = torch.where(torch.rand(n, generator=g) < 0.1, 5.0, 0.01)
    else:
        x[:, 0] = 1.0 + 0.1 * torch.rand(n, generator=g)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def _signals(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "sifting": False, "f": 0.1, "d": 0.0, "keep": 0.5, "c": 0.95, "rise": math.nan,
        "comparison": None, "auto": CHEAP,
    }  # fmt: skip
    values.update(overrides)
    return values


# ----------------------------------------------------------------------------- the rule
def test_cheap_scoring_and_concentrated_losses_sift() -> None:
    verdict = judge(**_signals())
    assert verdict is not None and verdict[0]
    assert verdict[1].startswith("sift: predicted 1.67x faster per epoch at keep 0.50")


def test_scoring_too_expensive_for_the_step_trains_plain() -> None:
    verdict = judge(**_signals(f=0.7))
    assert verdict == (
        False,
        "plain (cost): a scoring pass costs 70% of a training step, so sifting at keep 0.50 "
        "would be at most 0.83x faster per epoch (needs 1.10x)",
    )
    # Slow data loading dilutes what sifting saves: (1 + d) / (d + f + keep) = 1.07 here.
    verdict = judge(**_signals(f=0.3, d=2.0))
    assert verdict is not None and not verdict[0] and "1.07x" in verdict[1]


def test_even_losses_train_plain() -> None:
    verdict = judge(**_signals(c=0.58))
    assert verdict is not None and not verdict[0]
    assert verdict[1].startswith("plain (even losses): the higher-loss half of the samples "
                                 "carries 58% of the loss (needs 70%)")  # fmt: skip


def test_losses_still_concentrating_wait_but_do_not_stop_sifting() -> None:
    rising = judge(**_signals(rise=0.2))
    assert rising is not None and not rising[0] and rising[1].startswith("plain (still conc")
    assert judge(**_signals(rise=0.2, sifting=True)) is not None
    assert judge(**_signals(rise=0.2, sifting=True))[0]  # type: ignore[index]


def test_hysteresis_keeps_the_current_mode_near_the_thresholds() -> None:
    # Speedup 1.08 (f=0.426): below 1.1 to start, above 1.05 to stay.
    assert not judge(**_signals(f=0.426))[0]  # type: ignore[index]
    assert judge(**_signals(f=0.426, sifting=True))[0]  # type: ignore[index]
    assert not judge(**_signals(c=0.68))[0]  # type: ignore[index]
    assert judge(**_signals(c=0.68, sifting=True))[0]  # type: ignore[index]


def test_progress_comparisons_stop_sifting_only_on_clear_evidence() -> None:
    clear = judge(**_signals(sifting=True, comparison=(3.0, 1.5, 3)))
    assert clear is not None and not clear[0]
    assert clear[1] == (
        "plain (progress): per unit of compute, plain windows lowered the loss 1.50x as fast "
        "as the sifted windows around them (3 comparisons)"
    )
    for weak in ((3.0, 1.5, 2), (1.5, 1.5, 5), (3.0, 1.05, 5)):
        assert judge(**_signals(sifting=True, comparison=weak))[0]  # type: ignore[index]


def test_unknown_signals_cannot_be_judged() -> None:
    assert judge(**_signals(f=math.nan)) is None
    assert judge(**_signals(c=math.nan)) is None


def test_progress_rate() -> None:
    assert progress_rate([2.0, 2.0, 2.0], [3.0, 2.0, 1.0]) == pytest.approx(0.5)
    assert progress_rate([1.0, 1.0], [1.0, 1.0]) == 0.0
    assert math.isnan(progress_rate([1.0], [1.0]))


def test_auto_validates_and_describes_itself() -> None:
    with pytest.raises(ValueError, match="probe"):
        ss.Auto(probe=1)
    with pytest.raises(ValueError, match="every"):
        ss.Auto(every=5, probe=2)
    with pytest.raises(ValueError, match="min_concentration"):
        ss.Auto(min_concentration=0.3)
    for bad in (-1.0, None, "measured", math.inf):
        with pytest.raises(
            ValueError, match=r"`cost_ratio` to be a non-negative float .*'measure'"
        ):
            ss.Auto(cost_ratio=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="other than Auto"):
        ss.Auto(ss.Auto())
    auto = ss.Auto(ss.Guarded(ss.TopK(0.5), exclude_top=0.1), probe=3, every=30)
    assert repr(auto) == "Auto(Guarded(TopK(keep=0.5), exclude_top=0.1), every=30, probe=3)"
    assert auto.matches(auto.describe()) and not ss.Auto().matches(auto.describe())
    assert auto.expected_keep == pytest.approx(0.4)


# ----------------------------------------------------------------------------- the controller
def _round(ctl: AutoController, losses: np.ndarray, scalars: np.ndarray | None = None) -> str:
    kind = ctl.kind()
    kept = [int(losses.size // 2)] if kind == SIFT else None
    shown = losses if kind != SKIP else np.empty(0)
    ctl.observe([shown], kept, [np.zeros(SCALARS) if scalars is None else scalars])
    return kind


def test_controller_measures_then_sifts_with_plain_windows_every_cycle() -> None:
    ctl = AutoController(ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio=0.1))
    losses = np.array([0.0, 0.0, 0.0, 4.0])
    kinds = [_round(ctl, losses) for _ in range(2 + 4 + 6)]
    assert kinds == [MEASURE] * 2 + [SIFT] * 4 + [MEASURE] * 2 + [SIFT] * 4
    assert ctl.state == "sift" and ctl.reason.startswith("sift:")


def test_controller_trains_plain_unscored_and_probes_every_cycle() -> None:
    auto = ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio="measure")  # reads the timings
    ctl = AutoController(auto)
    dear = np.array([4.0, 4.0, 4.0, 4.0, 0.0, 4.0])  # scoring 1 s/sample, step 1 s/sample
    even = np.array([1.0, 1.0, 1.0, 1.2])
    kinds = [_round(ctl, even, dear) for _ in range(2 + 6)]
    assert kinds == [MEASURE] * 2 + [SKIP] * 4 + [MEASURE] * 2
    assert ctl.state == "plain" and ctl.reason.startswith("plain (cost)")
    # Scoring became cheap (a tenth of the step) and losses concentrated: the first probe
    # still sees the dear timings in its median window; the next one sifts.
    cheap = np.array([0.4, 4.0, 4.0, 4.0, 0.0, 4.0])
    concentrated = np.array([0.0, 0.0, 0.0, 4.0])
    kinds = [_round(ctl, concentrated, cheap) for _ in range(12)]
    assert kinds == ([SKIP] * 4 + [MEASURE] * 2) * 2
    assert ctl.state == "sift" and ctl.reason.startswith("sift:")
    # Flat losses are no evidence against sifting: it goes on.
    kinds = [_round(ctl, concentrated, cheap) for _ in range(60)]
    assert ctl.state == "sift" and SKIP not in kinds


def test_controller_falls_back_on_progress_and_backs_off() -> None:
    auto = ss.Auto(ss.TopK(0.5), probe=3, every=9, cost_ratio=0.1)
    ctl = AutoController(auto)
    loss = 10.0
    concentrated = np.array([0.0, 0.0, 0.0, 1.0])
    for _ in range(3 + 9 * 8):
        kind = ctl.kind()
        if ctl.state == "plain":
            break
        # Plain windows lower the loss three times as fast per compute as sifted rounds.
        loss -= 0.3 if kind == MEASURE else 0.06
        _round(ctl, concentrated * loss)
    assert ctl.state == "plain", ctl.reason
    assert ctl.reason.startswith("plain (progress)") and ctl.backoff == 1
    assert ctl.wait == 2 * auto.every - auto.probe


def test_controller_state_round_trips() -> None:
    ctl = AutoController(ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio="measure"))
    scalars = np.array([0.1, 4.0, 4.0, 4.0, 0.0, 4.0])
    for i in range(9):
        _round(ctl, np.array([0.0, 0.1, 0.0, 3.0 + i]), scalars)
    copy = AutoController(ctl.auto)
    copy.load_state_dict(ctl.state_dict())
    for i in range(20):
        losses = np.array([0.0, 0.1, 0.0, 1.0 + i])
        assert _round(copy, losses, scalars) == _round(ctl, losses, scalars)
    assert (copy.state, copy.reason) == (ctl.state, ctl.reason)


# ----------------------------------------------------------------------------- in the loader
def _loader(policy: ss.Policy, data: TensorDataset, **kwargs: Any) -> ss.SiftingDataLoader:
    return ss.SiftingDataLoader(
        DataLoader(data, batch_size=32), MODEL, _fixed_loss, policy, seed=0, batch_size=16,
        **kwargs,
    )  # fmt: skip


def test_loader_trains_plain_and_unscored_where_scoring_is_too_dear() -> None:
    calls = []

    def counting_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        calls.append(len(batch[0]))
        return _fixed_loss(model, batch)

    policy = ss.Auto(ss.TopK(0.5), probe=2, every=10, cost_ratio=2.0)
    loader = ss.SiftingDataLoader(
        DataLoader(_data(), batch_size=32), MODEL, counting_loss, policy, seed=0, batch_size=16
    )
    steps = sum(1 for _ in range(2) for _ in loader)
    stats = loader.stats
    assert stats.auto_state == "plain" and stats.auto_reason.startswith("plain (cost)")
    # 40 raw batches: 2 measured, then per cycle of 10: 8 passed through, 2 probes scored.
    assert len(calls) == 2 + 3 * 2 and stats.samples_passed == 32 * (40 - len(calls))
    assert stats.samples_sifted == 0 and steps == 80  # everything trained, in steps of 16
    assert stats.as_dict()["auto_sifting"] == 0.0 and "auto=plain (cost)" in str(stats)
    assert conservation_errors(stats) == []


def test_loader_sifts_where_it_pays_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    loader = _loader(ss.Auto(ss.TopK(0.5), probe=2, every=10, cost_ratio=0.1), _data())
    with caplog.at_level(logging.INFO, logger="smartsift"):
        for _ in range(2):
            list(loader)
    stats = loader.stats
    assert stats.auto_state == "sift" and stats.as_dict()["auto_sifting"] == 1.0
    assert stats.samples_sifted > 0 and stats.samples_passed == 0
    assert [r.getMessage() for r in caplog.records] == [
        "smartsift auto, epoch 0: " + stats.auto_reason
    ]
    assert loader.global_stats().auto_reason == stats.auto_reason  # one process: itself


def test_loader_trains_plain_where_losses_are_even() -> None:
    loader = _loader(ss.Auto(ss.TopK(0.5), probe=2, every=10, cost_ratio=0.1), _data(
        concentrated=False
    ))  # fmt: skip
    list(loader)
    assert loader.stats.auto_state == "plain"
    assert loader.stats.auto_reason.startswith("plain (even losses)")


def test_loader_measures_the_step_between_batches() -> None:
    """Measured costs: a loop that does nothing with its batches makes scoring the dear part."""
    loader = _loader(ss.Auto(ss.TopK(0.5), probe=2, every=10, cost_ratio="measure"), _data())
    for _ in loader:
        pass
    assert loader.stats.auto_state == "plain"
    assert loader.stats.auto_reason.startswith("plain (cost)")


def test_other_policies_report_no_auto_state() -> None:
    loader = _loader(ss.TopK(0.5), _data())
    list(loader)
    assert loader.stats.auto_state == "" and "auto_sifting" not in loader.stats.as_dict()


def test_auto_loader_resumes_exactly() -> None:
    def make() -> ss.SiftingDataLoader:
        order = torch.Generator().manual_seed(1)
        raw = DataLoader(_data(192), batch_size=16, shuffle=True, generator=order)
        policy = ss.Auto(
            ss.Guarded(ss.RelativeProbabilistic(beta=1.0, history=64), exclude_top=0.05),
            probe=2, every=6, cost_ratio=0.1,
        )  # fmt: skip
        return ss.SiftingDataLoader(raw, MODEL, _fixed_loss, policy, seed=0, batch_size=8)

    states = assert_resume_matches(make, [0, 1, 5, 13], epochs=3)
    assert {s["selector"]["auto"]["state"] for s in states} >= {"measuring", "sift"}


# ----------------------------------------------------------------------------- under DDP
def auto_ranks(rank: int, world_size: int) -> dict[str, Any]:
    """Auto with measured timings; rank 1's steps are slower, so local timings differ."""
    data = _data(384)
    sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=0)
    policy = ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio="measure")
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=16, sampler=sampler), MODEL, _fixed_loss, policy, seed=0,
        batch_size=8,
    )  # fmt: skip
    steps, states = [], []
    for epoch in range(2):
        loader.set_epoch(epoch)
        n = 0
        for _ in loader:
            n += 1
            if rank == 1:
                time.sleep(0.0005)
            states.append(loader.stats.auto_state)
        steps.append(n)
    return {"steps": steps, "states": states, "reason": loader.stats.auto_reason}


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
def test_every_rank_takes_the_same_decisions() -> None:
    a, b = run_ranks(auto_ranks, 2, timeout=120)
    assert a == b


# ----------------------------------------------------------------------------- held-out metric
def test_track_best_counts_checks_since_a_new_best() -> None:
    held = HeldOut()
    for value in (0.9, 0.7, 0.72, 0.71):
        held = track_best(held, value, higher_is_better=False, min_delta=0.0)
    assert held == HeldOut(checks=4, best=0.7, since_best=2, last=0.71)
    assert held.stalled(2) and not held.stalled(3)
    up = HeldOut()
    for value in (0.5, 0.6, 0.605, math.nan):
        up = track_best(up, value, higher_is_better=True, min_delta=0.01)
    # 0.605 beats 0.6 by less than min_delta; NaN is no new best.
    assert (up.best, up.since_best, up.checks) == (0.6, 2, 4) and math.isnan(up.last)
    # One check says nothing of a trend, even a stalled-looking one.
    assert not track_best(HeldOut(), 1.0, higher_is_better=True, min_delta=0.0).stalled(1)


def test_an_improving_held_out_metric_keeps_training_plain() -> None:
    auto = ss.Auto(ss.TopK(0.5), cost_ratio=0.1, validate=lambda: 0.0, patience=2)
    improving = HeldOut(checks=3, best=0.8, since_best=1, last=0.81)
    verdict = judge(**_signals(auto=auto, held_out=improving))
    assert verdict == (
        False,
        "plain (held-out improving): the validation metric is 0.81, its best 0.8 set 1 "
        "check(s) ago (sifting waits for 2 checks without a better one): the model still turns "
        "compute into held-out gains",
    )
    # A new best while sifting stops it too; a stalled metric lets the other signals decide.
    assert not judge(**_signals(auto=auto, held_out=improving, sifting=True))[0]  # type: ignore[index]
    stalled = HeldOut(checks=4, best=0.8, since_best=2, last=0.82)
    assert judge(**_signals(auto=auto, held_out=stalled))[0]  # type: ignore[index]
    # Cheaper reasons come first: a dear scoring pass is named as such.
    dear = judge(**_signals(auto=auto, held_out=improving, f=0.9))
    assert dear is not None and dear[1].startswith("plain (cost)")


def test_held_out_arguments_are_checked_and_described() -> None:
    def val_loss() -> float:
        return 1.0

    with pytest.raises(TypeError, match="`validate` to be None or a callable"):
        ss.Auto(validate=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`patience` to be a positive int, but got 0"):
        ss.Auto(validate=val_loss, patience=0)
    with pytest.raises(ValueError, match="`min_delta` to be a non-negative float"):
        ss.Auto(validate=val_loss, min_delta=-1.0)
    with pytest.raises(TypeError, match="`higher_is_better` to be a bool"):
        ss.Auto(validate=val_loss, higher_is_better=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`patience`, `min_delta` only apply .* validate=\.\.\."):
        ss.Auto(patience=5, min_delta=0.1)
    auto = ss.Auto(ss.TopK(0.5), validate=val_loss, patience=5)
    assert repr(auto).endswith("validate='test_held_out_arguments_are_checked_and_described."
                               "<locals>.val_loss', patience=5)")  # fmt: skip
    assert auto.matches(auto.describe()) and not ss.Auto(ss.TopK(0.5)).matches(auto.describe())


class _Validation:
    """A held-out metric scripted by the number of calls: improving, then flat."""

    def __init__(self, model: torch.nn.Module, improving: int) -> None:
        self.model, self.improving, self.calls = model, improving, 0
        self.modes: list[bool] = []
        self.grad: list[bool] = []

    def __call__(self) -> float:
        self.modes.append(self.model.training)
        self.grad.append(torch.is_grad_enabled())
        self.model.eval()  # as a real validation would; the loader must restore the mode
        self.calls += 1
        return 1.0 / min(self.calls, self.improving)


def test_loader_sifts_only_once_the_held_out_metric_stalls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = torch.nn.Linear(2, 2)
    validation = _Validation(model, improving=4)
    scored: list[int] = []

    def counting_loss(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        scored.append(len(batch[0]))
        return _fixed_loss(m, batch)

    policy = ss.Auto(ss.TopK(0.5), probe=2, every=10, cost_ratio=0.1, validate=validation)
    loader = ss.SiftingDataLoader(
        DataLoader(_data(), batch_size=32), model, counting_loss, policy, seed=0, batch_size=16
    )
    states, checks, scorings = [], [], []
    with caplog.at_level(logging.INFO, logger="smartsift"):
        for _ in range(4):
            for _ in loader:
                states.append(loader.stats.auto_state)
                checks.append(validation.calls)
                scorings.append(len(scored))
    ctl = loader._selector.state
    assert ctl is not None and validation.calls == ctl.judgements == ctl.held_out.checks
    # Checks 1-4 set new bests (plain); checks 5-7 do not (patience 3): sifting starts.
    first_sift = states.index("sift")
    assert checks[first_sift] == 7 and set(states[:first_sift]) <= {"measuring", "plain"}
    # While the metric improved, no probe was scored: only the first measurement and the
    # probe after the stalled check 7 (and at most the first sifted raw batch).
    assert 2 * 2 <= scorings[first_sift] <= 2 * 2 + 1
    assert loader.stats.samples_sifted > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("plain (held-out improving)" in m for m in messages)
    assert model.training and all(validation.modes) and not any(validation.grad)


def test_loader_reports_a_failing_or_wrong_validation() -> None:
    def broken() -> float:
        raise RuntimeError("no validation set")

    policy = ss.Auto(ss.TopK(0.5), probe=2, every=10, cost_ratio=0.1, validate=broken)
    with pytest.raises(RuntimeError, match="no validation set") as info:
        list(_loader(policy, _data()))
    assert info.value.__notes__ == ["smartsift: raised in Auto's validate()."]
    wrong = ss.Auto(ss.TopK(0.5), probe=2, every=10, validate=lambda: "0.9")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"validate\(\)` of Auto to return a number.*'0.9'"):
        list(_loader(wrong, _data()))


def test_held_out_record_resumes() -> None:
    auto = ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio=0.1, validate=lambda: 0.0)
    ctl, scalars = AutoController(auto), [np.zeros(SCALARS)]
    losses = [np.array([0.0, 0.0, 0.0, 4.0])]
    for i in range(20):
        ctl.observe(losses, [2], scalars, 1.0 / (i + 1) if ctl.validates_next() else None)
    copy = AutoController(auto)
    copy.load_state_dict(ctl.state_dict())
    assert copy.held_out == ctl.held_out and copy.held_out.checks > 2
    # A state saved before the held-out record existed starts it afresh.
    old = ctl.state_dict()
    del old["held_out"]
    copy.load_state_dict(old)
    assert copy.held_out == HeldOut()


def validating_ranks(rank: int, world_size: int) -> dict[str, Any]:
    """Each rank's validation half: rank 0's improves, rank 1's worsens faster, so the mean
    (what every rank must act on) worsens: Auto sifts on both ranks at the same check."""
    data = _data(384)
    sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=0)
    calls = [0]

    def validate() -> float:
        calls[0] += 1
        return -0.1 * calls[0] if rank == 0 else 0.3 * calls[0]

    policy = ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio=0.1, validate=validate)
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=16, sampler=sampler), MODEL, _fixed_loss, policy, seed=0,
        batch_size=8,
    )  # fmt: skip
    states = [loader.stats.auto_state for _ in range(2) for _ in loader]
    ctl = loader._selector.state
    assert ctl is not None
    return {"states": states, "calls": calls[0], "best": ctl.held_out.best}


def failing_validation_ranks(rank: int, world_size: int) -> str:
    data = _data(384)
    sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=0)

    def validate() -> float:
        if rank == 1:
            raise RuntimeError("rank 1 lost its validation set")
        return 0.0

    policy = ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio=0.1, validate=validate)
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=16, sampler=sampler), MODEL, _fixed_loss, policy, seed=0,
        batch_size=8,
    )  # fmt: skip
    try:
        list(loader)
    except Exception as err:  # every rank must stop, none may hang
        return f"{type(err).__name__}: {err}"
    return "finished"


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
def test_ranks_act_on_the_mean_held_out_metric_and_stop_together_on_failure() -> None:
    a, b = run_ranks(validating_ranks, 2, timeout=120)
    assert a == b and a["calls"] > 3 and "sift" in a["states"]
    assert a["best"] == pytest.approx(0.1)  # the mean of the first check, (-0.1 + 0.3) / 2
    first, second = run_ranks(failing_validation_ranks, 2, timeout=120)
    assert second == "RuntimeError: rank 1 lost its validation set"
    assert first.startswith("RemoteRankError: smartsift: Auto's validate() failed on 1 rank(s)")


# ----------------------------------------------------------------------------- no clock by default
def test_the_default_cost_is_a_stated_assumption_and_reads_no_clock() -> None:
    auto = ss.Auto(ss.TopK(0.5))
    assert auto.cost_ratio == ASSUMED_COST_RATIO == pytest.approx(1 / 3)
    assert not auto.measures_costs and repr(auto) == "Auto(TopK(keep=0.5))"
    ctl = auto.bind()
    times = RoundTimes(overhead_s=9.0, scored=4, step_s=0.001, trained=4, data_s=5.0, raw=4)
    assert ctl.round_scalars(times) is None  # no timing is even exchanged
    # Timings that do arrive (a rank measuring) move nothing.
    ctl.observe([np.array([1.0, 2.0])], None, [np.array([9.0, 4, 0.001, 4, 5.0, 4])])
    assert (ctl.f_over_t, ctl.d_over_t) == (pytest.approx(1 / 3), 0.0)
    measuring = ss.Auto(ss.TopK(0.5), cost_ratio="measure")
    assert measuring.measures_costs and repr(measuring).endswith("cost_ratio='measure')")
    assert measuring.bind().round_scalars(times) is not None
    assert not auto.matches(measuring.describe()) and not measuring.matches(auto.describe())


def test_checkpoints_saved_before_the_default_assumption_still_load() -> None:
    """A state saved when the default read the clock: its description names no cost_ratio,
    and its controller has no loss-reuse entries."""
    saved = Selector(ss.Auto(ss.TopK(0.5), probe=2, every=6)).state_dict()
    for key in ("per_epoch", "judged_epoch"):
        del saved["auto"][key]
    saved["policy"] = {"type": "Auto", "fields": {"policy": ss.TopK(0.5).describe(),
                                                   "every": 6, "probe": 2}}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    fresh = Selector(ss.Auto(ss.TopK(0.5), probe=2, every=6))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    ctl = fresh.state
    assert isinstance(ctl, AutoController)
    assert (ctl.per_epoch, ctl.judged_epoch, ctl.state) == (False, -1, "measuring")


def _learning_run(pause_s: float) -> list[Any]:
    """A linear classifier learning a separable task from scratch through Auto's defaults;
    every yielded batch's ids and the stats that are not timings."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    model = torch.nn.Linear(8, 3)
    with torch.no_grad():
        model.weight.copy_(0.01 * torch.randn(3, 8, generator=g))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        _, xb, yb = batch
        return torch.nn.functional.cross_entropy(m(xb), yb, reduction="none")

    raw = DataLoader(
        ss.IndexedDataset(TensorDataset(x, y)), batch_size=8, shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    loader = ss.SiftingDataLoader(raw, model, loss_fn, ss.Auto(), seed=0, batch_size=8)
    record = []
    for _ in range(5):
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model, batch).mean().backward()
            optimizer.step()
            if pause_s:
                time.sleep(pause_s)  # a slower step: with measured costs, sifting would pay more
            s = loader.stats
            counts = [getattr(s, k) for k in counter_fields()]
            record.append((batch[0].tolist(), counts, s.loss_quantiles, s.auto_state,
                           s.auto_reason))  # fmt: skip
    return record


def test_identically_seeded_runs_decide_alike_whatever_the_step_takes() -> None:
    fast, slow = _learning_run(0.0), _learning_run(0.002)
    assert fast == slow
    states = {r[3] for r in fast}
    assert states >= {"plain", "sift"}, states  # the run met both verdicts
    assert fast[-1][1][counter_fields().index("samples_sifted")] > 0


# ----------------------------------------------------------------------------- loss reuse
CONCENTRATED = np.array([0.0, 0.0, 0.01, 0.02, 0.0, 0.01, 3.0, 5.0])
EVEN = np.array([1.0, 1.1, 0.9, 1.05, 1.0, 0.95, 1.1, 1.0])


class _FakeContext:
    """A driver's held-out context: calls ``fn`` as one rank would and records the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def held_out(self, fn: Callable[[], Any], what: str) -> float:
        self.calls.append(what)
        with torch.no_grad():
            return float(fn())


def _scripted(values: list[float]) -> Callable[[], float]:
    it = iter(values)
    return lambda: next(it)


def test_reuse_rule_is_the_scoring_rule_without_the_scoring_pass() -> None:
    auto = ss.Auto(ss.TopK(0.5))
    sift = judge_reuse(sifting=False, keep=0.5, c=0.95, auto=auto)
    assert sift == (True, "sift: predicted 2.00x faster per epoch at keep 0.50; the higher-loss "
                          "half of the samples carries 95% of the loss")  # fmt: skip
    # No cost gate: a keep the scoring pass could never pay for still sifts.
    assert judge_reuse(sifting=False, keep=0.95, c=0.95, auto=auto)[0]  # type: ignore[index]
    even = judge_reuse(sifting=False, keep=0.5, c=0.6, auto=auto)
    assert even == judge(**_signals(c=0.6, auto=auto))
    assert judge_reuse(sifting=True, keep=0.5, c=0.68, auto=auto)[0]  # type: ignore[index]
    assert judge_reuse(sifting=False, keep=0.5, c=math.nan, auto=auto) is None
    held = ss.Auto(ss.TopK(0.5), validate=lambda: 0.0)
    improving = HeldOut(checks=2, best=0.5, since_best=0, last=0.5)
    assert judge_reuse(sifting=True, keep=0.5, c=0.95, auto=held, held_out=improving) == (
        False, held_out_gate(improving, held)
    )  # fmt: skip


def test_judge_epoch_trains_plain_while_the_metric_improves_then_sifts() -> None:
    values = [1.0, 0.5, 0.4, 0.45, 0.45, 0.45, 0.3, 0.35]
    auto = ss.Auto(ss.TopK(0.5), validate=_scripted(values), patience=3)
    ctl, context = auto.bind(), _FakeContext()
    assert ctl.needs.held_out and not ctl.needs.scoring_pass
    verdicts = [ctl.judge_epoch(e, CONCENTRATED, context) for e in range(len(values) + 1)]
    # Epoch 0 trains everything unchecked; one check per later epoch.
    assert verdicts[0] == (False, "measuring: every candidate trained in the first epoch, to "
                                  "judge whether sifting pays")  # fmt: skip
    assert context.calls == ["in Auto's validate()"] * len(values)
    # Checks 1-3 set new bests, 4-6 do not (patience 3): epoch 6 sifts; check 7 is a new best
    # again: plain, and it stays plain while the best is younger than 3 checks.
    assert [s for s, _ in verdicts] == [False] * 6 + [True, False, False]
    assert all(r.startswith("plain (held-out improving)") for _, r in verdicts[1:6])
    assert verdicts[1][1] == held_out_gate(HeldOut(1, 1.0, 0, 1.0), auto)
    assert verdicts[6][1].startswith("sift: predicted 2.00x faster per epoch at keep 0.50")
    assert ctl.status() == ("plain", verdicts[-1][1]) and ctl.held_out.checks == len(values)


def test_judge_epoch_trains_plain_on_even_losses_and_checks_once_per_epoch() -> None:
    ctl = ss.Auto(ss.TopK(0.5)).bind()
    ctl.judge_epoch(0, np.zeros(0), None)
    sift, reason = ctl.judge_epoch(1, EVEN, None)
    assert not sift
    assert reason.startswith(
        "plain (even losses): the higher-loss half of the samples carries 52% of the loss "
        "(needs 70%)"
    )
    assert ctl.judge_epoch(2, CONCENTRATED, None)[0]
    # Losses that cannot tell (fewer than two): the previous verdict stands.
    assert ctl.judge_epoch(3, np.array([2.0]), None) == (True, ctl.reason)
    # Asked again for the epoch it judged last: the same answer, no second check.
    grads: list[bool] = []

    def val_loss() -> float:
        grads.append(torch.is_grad_enabled())
        return 0.0

    held = ss.Auto(validate=val_loss).bind()
    first = held.judge_epoch(1, CONCENTRATED, None)
    assert held.judge_epoch(1, EVEN, None) == first and grads == [False]  # under no_grad


def test_judge_epoch_hands_sifted_epochs_to_the_wrapped_policy() -> None:
    selector = Selector(ss.Auto(ss.TopK(0.25)))
    ctl = selector.state
    assert isinstance(ctl, AutoController) and ctl.judge_epoch(1, CONCENTRATED, None)[0]
    masks = selector.decide([CONCENTRATED]).masks
    assert masks[0].tolist() == [False] * 6 + [True, True]  # TopK's, not Auto's "keep all"
    assert ctl.keep == 0.25  # what the sifted epochs kept


def test_judge_epoch_state_round_trips() -> None:
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8]
    auto = ss.Auto(ss.TopK(0.5), validate=_scripted(values), patience=2)
    ctl, context = auto.bind(), _FakeContext()
    for epoch in range(4):
        ctl.judge_epoch(epoch, CONCENTRATED if epoch % 2 else EVEN, context)
    buffer = io.BytesIO()
    torch.save(ctl.state_dict(), buffer)
    buffer.seek(0)
    # The copy reads the same metric from where the original stopped.
    copy = ss.Auto(ss.TopK(0.5), validate=_scripted(values[3:]), patience=2).bind()
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    assert (copy.held_out, copy.judged_epoch, copy.per_epoch) == (ctl.held_out, 3, True)
    # Asked for the epoch it judged last, the copy answers as the original without a check.
    assert copy.judge_epoch(3, EVEN, context) == (ctl.state == "sift", ctl.reason)
    for epoch in range(4, 10):
        losses = CONCENTRATED if epoch % 3 else EVEN
        assert copy.judge_epoch(epoch, losses, context) == ctl.judge_epoch(epoch, losses, context)
    assert copy.state_dict() == ctl.state_dict()
