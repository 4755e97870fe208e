"""What the framework integrations share (``smartsift.integrations.adapter``) and the schedule
arithmetic they call (``smartsift.modes.schedules``): pure functions, no framework needed."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as lrs
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import smartsift as ss
from smartsift.integrations.adapter import (
    FROM_FRAMEWORK,
    LazySifter,
    check_loader_kwargs,
    check_settings,
    passthrough_names,
)
from smartsift.modes.schedules import (
    catch_up_steps,
    infer_samples_per_epoch,
    plain_steps,
    plain_steps_per_epoch,
    schedule_position,
    steps_left,
)

# The schedulers here are stepped without an optimizer step, which torch warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")


def row_sum(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch).sum(1)


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)


# --------------------------------------------------------------------------- loader arguments
def test_the_passed_through_arguments_are_the_loaders_keyword_only_ones_less_the_reserved() -> None:
    names = passthrough_names()
    assert names == sorted(names)
    assert {"batch_size", "drop_last", "padding", "seed", "sift_delay", "audit"} <= set(names)
    assert not {"dataloader", "model", "loss_fn", "policy"} & set(names)  # positional: not passed
    assert "seed" not in passthrough_names(reserved={"seed": "why"})


def test_valid_loader_arguments_come_back_as_a_copy() -> None:
    given = {"batch_size": 8, "drop_last": True}
    checked = check_loader_kwargs(given, caller="sift_dataloader")
    assert checked == given and checked is not given
    assert check_loader_kwargs({}, caller="sift_dataloader") == {}


def test_an_unknown_argument_is_named_with_its_value_and_the_closest_accepted_name() -> None:
    with pytest.raises(TypeError) as info:
        check_loader_kwargs({"bacth_size": 4}, caller="sift_dataloader")
    message = str(info.value)
    assert "`bacth_size`=4" in message
    assert "did you mean `batch_size`?" in message
    assert "sift_dataloader passes on" in message and "drop_last" in message


def test_every_wrong_argument_is_named_in_one_error() -> None:
    with pytest.raises(TypeError) as info:
        check_loader_kwargs({"zzz": 1, "seeed": 2, "batch_size": 8}, caller="enable_sifting")
    message = str(info.value)
    assert "`zzz`=1, not one of them;" in message  # nothing close: no suggestion
    assert "`seeed`=2, not one of them (did you mean `seed`?)" in message
    assert "batch_size`=" not in message


def test_a_reserved_argument_is_named_with_the_fix_and_a_model_by_its_type() -> None:
    with pytest.raises(TypeError) as info:
        check_loader_kwargs({"model": torch.nn.Linear(2, 2)}, caller="enable_sifting")
    message = str(info.value)
    assert "`model`=<Linear>, which enable_sifting sets itself" in message
    assert FROM_FRAMEWORK["model"] in message and "\n" not in message
    custom = {"policy": "give the policy through `sift_config`"}
    with pytest.raises(TypeError, match=r"`policy`=None, .*through `sift_config`"):
        check_loader_kwargs({"policy": None}, caller="SiftingDataloader", reserved=custom)


def test_settings_the_loader_would_refuse_fail_at_set_up() -> None:
    model = torch.nn.Linear(2, 1)
    check_settings(model, row_sum, ss.TopK(0.5), {"batch_size": 4, "seed": 0})
    with pytest.raises(ValueError, match=r"`sift_delay` to be a non-negative int.*got -1"):
        check_settings(model, row_sum, None, {"sift_delay": -1})
    with pytest.raises(TypeError, match="Policy"):
        check_settings(model, row_sum, "topk", {})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the lazy loader
def test_the_loader_is_built_on_demand_around_the_frameworks_loader() -> None:
    sifter = LazySifter(row_sum, ss.TopK(0.5), {"seed": 0})
    assert sifter.loader is None and sifter.raw is None
    assert sifter.stats.samples_seen == 0  # empty stats before the first build
    raw = DataLoader(torch.arange(16.0).reshape(8, 2), batch_size=4)
    model = torch.nn.Linear(2, 1)
    loader = sifter.build(raw, model)
    assert isinstance(loader, ss.SiftingDataLoader)
    assert sifter.loader is loader and sifter.raw is raw and loader.dataloader is raw
    assert sum(len(x) for x in loader) == 4  # TopK(0.5) of 8 samples
    assert sifter.stats.samples_seen == 8 and sifter.stats.samples_kept == 4
    again = sifter.build(raw, model)  # a fresh loader each build, with fresh stats
    assert again is not loader and sifter.stats.samples_seen == 0


def test_the_adapter_imports_no_framework() -> None:
    code = (
        "import sys, smartsift.integrations.adapter; "
        "print(sorted(m for m in ('transformers', 'accelerate', 'lightning', 'pytorch_lightning')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# --------------------------------------------------------------------------- schedule arithmetic
def test_catch_up_steps_moves_to_the_target_never_back_nor_past_the_end() -> None:
    assert catch_up_steps(10, 7) == 3
    assert catch_up_steps(7, 7) == 0
    assert catch_up_steps(5, 7) == 0  # ahead of the data: it waits
    assert catch_up_steps(10, 7, remaining=2) == 2
    assert catch_up_steps(10, 7, remaining=0) == 0
    assert catch_up_steps(10, 7, remaining=5) == 3


def test_steps_left_reads_the_schedulers_own_end_or_the_given_one() -> None:
    one_cycle = lrs.OneCycleLR(optimizer(), max_lr=1.0, total_steps=10)
    for _ in range(4):
        one_cycle.step()
    assert steps_left(one_cycle) == 6
    assert steps_left(one_cycle, total_steps=5) == 1  # the nearer end
    cosine = lrs.CosineAnnealingLR(optimizer(), T_max=10)
    assert steps_left(cosine) is None
    assert steps_left(cosine, total_steps=3) == 3
    opt = optimizer()
    chained = lrs.ChainedScheduler([lrs.StepLR(opt, 2), lrs.ExponentialLR(opt, 0.9)])
    assert steps_left(chained, total_steps=10, taken=4) == 6  # no step count of its own
    assert steps_left(lrs.StepLR(optimizer(), 2), total_steps=0) == 0


def test_plain_steps_per_epoch_counts_a_ranks_batches() -> None:
    assert plain_steps_per_epoch(128, 16) == 8
    assert plain_steps_per_epoch(130, 16) == 9
    assert plain_steps_per_epoch(130, 16, drop_last=True) == 8
    assert plain_steps_per_epoch(130, 16, world_size=2) == 5  # 65 samples per rank
    assert plain_steps_per_epoch(0, 16) == 0
    with pytest.raises(ValueError, match="`world_size` to be a positive int"):
        plain_steps_per_epoch(10, 2, world_size=0)


def test_samples_per_epoch_are_inferred_per_rank_less_what_drop_last_drops() -> None:
    data = TensorDataset(torch.zeros(10, 1))
    assert infer_samples_per_epoch(DataLoader(data, batch_size=4)) == 10
    assert infer_samples_per_epoch(DataLoader(data, batch_size=4, drop_last=True)) == 8
    shard = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    assert infer_samples_per_epoch(DataLoader(data, batch_size=4, sampler=shard)) == 5
    assert infer_samples_per_epoch(DataLoader(data, batch_size=None)) is None  # batch sizes unknown
    assert infer_samples_per_epoch([torch.zeros(2)]) is None


def test_schedule_position_maps_the_data_consumed_onto_a_schedule_of_other_steps() -> None:
    assert [schedule_position(p, 16) for p in (0.0, 0.25, 0.5, 1.0)] == [0, 4, 8, 16]
    assert schedule_position(0.29, 100) == 29  # 0.29 * 100 is 28.99999...: not cut to 28
    assert schedule_position(0.99, 10) == 9  # floor: the schedule never leads the data
    assert schedule_position(1.5, 10) == 10 and schedule_position(-0.1, 10) == 0  # clamped


def top_up_run(scheduler: Any, consumed_per_step: list[int], batch_size: int, n: int) -> None:
    """Steps ``scheduler`` as the Lightning callback does: once per sifted optimizer step by
    the framework, then up to the plain steps the data consumed so far is worth."""
    for consumed in consumed_per_step:
        scheduler.step()  # the framework's own step
        target = plain_steps(consumed, batch_size, n)
        for _ in range(catch_up_steps(target, scheduler.last_epoch, steps_left(scheduler))):
            scheduler.step()


def test_a_topped_up_schedule_ends_with_the_data_whatever_was_sifted() -> None:
    # 2 epochs of 100 samples at batch size 10: 20 plain steps. Each sifted step took 3 raw
    # batches (30 samples) but the last of each epoch, which took the epoch's remaining 10.
    consumed = [30, 60, 90, 100, 130, 160, 190, 200]
    linear = lrs.LambdaLR(optimizer(), lambda s: 1 - s / 20)
    top_up_run(linear, consumed, batch_size=10, n=100)
    assert linear.last_epoch == 20 and linear.get_last_lr()[0] == 0.0
    # A scheduler that knows its end is stepped to it and never past it (OneCycleLR raises).
    one_cycle = lrs.OneCycleLR(optimizer(), max_lr=1.0, total_steps=20)
    top_up_run(one_cycle, consumed, batch_size=10, n=100)
    assert one_cycle.last_epoch == 20


def test_a_topped_up_schedule_waits_when_the_framework_stepped_it_ahead_of_the_data() -> None:
    linear = lrs.LambdaLR(optimizer(), lambda s: 1.0)
    top_up_run(linear, [5, 10, 15], batch_size=10, n=100)  # 1.5 plain steps, 3 sifted ones
    assert linear.last_epoch == 3  # the framework's own steps; never stepped back
