"""SiftingDataLoader behaviour as a user relies on it."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

import smartsift as ss


class IdLoss:
    """A loss that is a fixed function of each sample's id, for exact control of selection."""

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return (batch["id"].float() * 7919 % 101) / 101.0


def _id_data(n: int) -> list[dict]:
    return [{"id": torch.tensor(i), "x": torch.randn(3), "name": f"n{i}"} for i in range(n)]


def _ids(batches: list[dict]) -> list[int]:
    return [i for b in batches for i in b["id"].tolist()]


@pytest.mark.parametrize(
    ("n", "raw_bs", "bs", "drop_last"),
    [
        (103, 10, 7, False),
        (103, 10, 7, True),
        (64, 16, 16, False),
        (5, 8, 3, False),
        # One sample, drop_last: the epoch trains nothing and the loader says so.
        pytest.param(1, 4, 4, True, marks=pytest.mark.filterwarnings("ignore:This epoch pulled")),
    ],
)
def test_every_sample_is_trained_once_or_counted(
    n: int, raw_bs: int, bs: int, drop_last: bool
) -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(n), batch_size=raw_bs),
        torch.nn.Identity(),
        IdLoss(),
        policy=ss.RelativeProbabilistic(beta=1.0, history=50),
        batch_size=bs,
        drop_last=drop_last,
        seed=0,
    )
    steps = 0
    for epoch in range(2):
        batches = list(loader)
        sizes = [len(b["id"]) for b in batches]
        assert all(s == bs for s in sizes[:-1])
        assert (sizes[-1] == bs) if (drop_last and sizes) else (not sizes or 0 < sizes[-1] <= bs)
        ids = _ids(batches)
        assert len(ids) == len(set(ids))
        for b in batches:  # samples stay whole: id, features and name travel together
            assert b["name"] == [f"n{i}" for i in b["id"].tolist()]
        s = loader.stats
        assert s.samples_seen == n * (epoch + 1)
        assert s.samples_seen == s.samples_kept + s.samples_sifted
        assert s.samples_kept == s.samples_trained + s.samples_dropped + s.samples_buffered
        assert s.samples_buffered == 0 and s.epochs == epoch + 1
        assert s.steps == steps + len(batches)
        steps = s.steps


def test_topk_selects_the_highest_losses_of_each_batch() -> None:
    loss = IdLoss()
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(40), batch_size=10), torch.nn.Identity(), loss,
        policy=ss.TopK(keep=0.3), batch_size=3, seed=0,
    )  # fmt: skip
    kept = _ids(list(loader))
    expected = []
    for start in range(0, 40, 10):
        ids = torch.arange(start, start + 10)
        scores = loss(None, {"id": ids})  # type: ignore[arg-type]
        expected += ids[scores.argsort(descending=True, stable=True)[:3]].sort().values.tolist()
    assert kept == expected
    assert loader.stats.samples_kept == 12


def test_refined_batches_keep_the_order_of_arrival() -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(50), batch_size=10), torch.nn.Identity(), IdLoss(),
        policy=ss.QuantileThreshold(exclude=0.5, history=20), seed=0,
    )  # fmt: skip
    ids = _ids(list(loader))
    assert ids == sorted(ids) and len(ids) < 50


def test_quantile_threshold_on_a_full_history_drops_the_bottom() -> None:
    # history=10 holds exactly one raw batch, so each batch is ranked against itself.
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(30), batch_size=10), torch.nn.Identity(), IdLoss(),
        policy=ss.QuantileThreshold(exclude=0.3, history=10), seed=0,
    )  # fmt: skip
    assert loader.stats.samples_kept == 0
    list(loader)
    assert loader.stats.samples_kept == 21 and loader.stats.samples_sifted == 9


def test_sift_delay_passes_raw_batches_through_untouched() -> None:
    raw = DataLoader(_id_data(60), batch_size=10)
    calls = []

    def loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        calls.append(1)
        return IdLoss()(model, batch)

    loader = ss.SiftingDataLoader(
        raw, torch.nn.Identity(), loss, policy=ss.TopK(keep=0.5), sift_delay=4, seed=0
    )
    first = list(loader)
    assert _ids(first[:4]) == list(range(40))
    assert len(calls) == 2  # only the two raw batches after the delay were scored
    assert loader.stats.samples_kept == 40 + 10
    second = list(loader)
    assert len(calls) == 8 and len(_ids(second)) == 30  # no delay in epoch 2

    repeat = ss.SiftingDataLoader(
        raw, torch.nn.Identity(), IdLoss(), policy=ss.TopK(keep=0.5), sift_delay=4,
        repeat_delay_per_epoch=True, seed=0,
    )  # fmt: skip
    assert [len(_ids(list(repeat))) for _ in range(2)] == [50, 50]


def test_sift_delay_cuts_raw_batches_larger_than_refined_ones() -> None:
    # Training takes steps of one size before and after sifting starts.
    raw = DataLoader(_id_data(40), batch_size=8)
    loader = ss.SiftingDataLoader(
        raw, torch.nn.Identity(), IdLoss(), policy=ss.TopK(keep=0.5), sift_delay=2,
        batch_size=3, seed=0,
    )  # fmt: skip
    assert len(loader) == math.ceil((16 + 24 * 0.5) / 3)
    batches = list(loader)
    assert [len(b["id"]) for b in batches[:5]] == [3] * 5
    assert _ids(batches[:5]) == list(range(15))
    assert all(len(b["id"]) == 3 for b in batches[:-1]) and 0 < len(batches[-1]["id"]) <= 3
    ids = _ids(batches)
    assert 15 in ids and len(ids) == len(set(ids))  # the delayed leftover is trained once
    assert loader.stats.samples_trained == 16 + 12  # the 16 delayed, half of the other 24
    assert len(batches) == math.ceil(28 / 3)
    assert len(loader) == math.ceil(40 * 0.5 / 3)  # the delay is over


@pytest.mark.parametrize("delay", [0, 2])
def test_an_empty_first_raw_batch_is_skipped(delay: int) -> None:
    batches = [{"id": torch.zeros(0, dtype=torch.long), "x": torch.zeros(0, 3)}] + [
        {"id": torch.arange(4 * i, 4 * i + 4), "x": torch.randn(4, 3)} for i in range(3)
    ]
    loader = ss.SiftingDataLoader(
        batches, torch.nn.Identity(), IdLoss(), policy=ss.TopK(keep=0.5), sift_delay=delay, seed=0
    )
    out = list(loader)
    # The empty batch takes a round (a delayed one when delay=2); the next delayed one passes
    # its 4 samples through, each sifted one keeps 2 of 4.
    expected = {0: 2 + 2 + 2, 2: 4 + 2 + 2}[delay]
    assert loader.stats.samples_seen == 12
    assert loader.stats.samples_trained == len(_ids(out)) == expected
    assert all(0 < len(b["id"]) <= 4 for b in out) and len(set(_ids(out))) == expected


def test_same_seed_same_selection_and_different_seed_differs() -> None:
    batches = list(DataLoader(_id_data(200), batch_size=20))

    def run(seed: int) -> list[int]:
        loader = ss.SiftingDataLoader(
            batches, torch.nn.Identity(), IdLoss(),
            policy=ss.RelativeProbabilistic(beta=1.0, history=100), seed=seed,
        )  # fmt: skip
        return _ids(list(loader))

    assert run(3) == run(3)
    assert run(3) != run(4)
    state = torch.random.get_rng_state()
    run(5)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_len_is_exact_without_sifting_and_estimates_with_it() -> None:
    raw = DataLoader(_id_data(100), batch_size=10)
    passthrough = ss.SiftingDataLoader(raw, torch.nn.Identity(), IdLoss(), sift_delay=10**6)
    assert len(passthrough) == 10 == len(list(passthrough))
    topk = ss.SiftingDataLoader(raw, torch.nn.Identity(), IdLoss(), policy=ss.TopK(keep=0.5))
    assert len(topk) == 5 == len(list(topk))
    delayed = ss.SiftingDataLoader(
        raw, torch.nn.Identity(), IdLoss(), policy=ss.TopK(keep=0.5), sift_delay=4
    )
    assert len(delayed) == 4 + 3
    assert len(list(delayed)) == 7
    assert len(delayed) == 5  # the delay is over

    class Endless(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from _id_data(3)

    with pytest.raises(TypeError, match="max_steps"):
        len(
            ss.SiftingDataLoader(DataLoader(Endless(), batch_size=2), torch.nn.Identity(), IdLoss())
        )


def test_workers_pin_memory_and_iterable_datasets() -> None:
    class Stream(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            info = torch.utils.data.get_worker_info()
            wid, nw = (info.id, info.num_workers) if info else (0, 1)
            yield from _id_data(40)[wid::nw]

    raw = DataLoader(Stream(), batch_size=6, num_workers=2, pin_memory=False)
    loader = ss.SiftingDataLoader(
        raw, torch.nn.Identity(), IdLoss(), policy=ss.Uniform(0.5), seed=1
    )
    ids = _ids(list(loader))
    assert len(ids) == len(set(ids)) == loader.stats.samples_kept
    assert loader.stats.samples_seen == 40


def test_set_epoch_reaches_the_sampler() -> None:
    class Sampler(torch.utils.data.Sampler[int]):
        def __init__(self) -> None:
            self.epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(range(10))

        def __len__(self) -> int:
            return 10

    sampler = Sampler()
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(10), batch_size=5, sampler=sampler), torch.nn.Identity(), IdLoss()
    )
    loader.set_epoch(3)
    assert sampler.epoch == 3


def test_device_moves_raw_batches_once() -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(20), batch_size=5), torch.nn.Identity(), IdLoss(),
        policy=ss.TopK(keep=1.0), device="cpu", seed=0,
    )  # fmt: skip
    assert all(b["x"].device.type == "cpu" for b in loader)


class Custom:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


class CustomTransform:
    def transform(self, batch: Custom) -> dict:
        return {"x": batch.x, "y": batch.y}

    def reverse_transform(self, data: dict) -> Custom:
        return Custom(data["x"], data["y"])


def _custom_batches() -> list[Custom]:
    return [Custom(torch.randn(8, 3), torch.arange(8) + 8 * i) for i in range(4)]


def test_custom_batches_need_a_transform_and_work_with_one() -> None:
    def loss(model: torch.nn.Module, batch: Custom) -> torch.Tensor:
        return batch.y.float()

    bare = ss.SiftingDataLoader(_custom_batches(), torch.nn.Identity(), loss, seed=0)
    with pytest.raises(TypeError, match="transform="):
        list(bare)
    loader = ss.SiftingDataLoader(
        _custom_batches(), torch.nn.Identity(), loss, policy=ss.TopK(0.5),
        transform=CustomTransform(), seed=0,
    )  # fmt: skip
    out = list(loader)
    assert all(isinstance(b, Custom) for b in out)
    assert [b.y.tolist() for b in out] == [
        [4, 5, 6, 7, 12, 13, 14, 15],
        [20, 21, 22, 23, 28, 29, 30, 31],
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sift_delay": -1}, ValueError, "`sift_delay` to be a non-negative int.*got -1"),
        ({"batch_size": 0}, ValueError, "`batch_size` to be a positive int or None, but got 0"),
        ({"seed": "x"}, ValueError, "`seed`"),
        ({"nonfinite": "ignore"}, ValueError, "`nonfinite`"),
        ({"policy": "beta=1"}, TypeError, "`policy` to be a smartsift Policy"),
        ({"transform": object()}, TypeError, "reverse_transform"),
        ({"log_interval": 0}, ValueError, "`log_interval`"),
        ({"world_size": 2}, ValueError, "init_process_group"),
    ],
)
def test_invalid_arguments_fail_at_construction(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ss.SiftingDataLoader(DataLoader(_id_data(4)), torch.nn.Identity(), IdLoss(), **kwargs)


def test_invalid_wrapped_objects() -> None:
    raw = DataLoader(_id_data(4))
    with pytest.raises(TypeError, match="one-shot iterator"):
        ss.SiftingDataLoader(iter(raw), torch.nn.Identity(), IdLoss())
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ss.SiftingDataLoader(raw, lambda x: x, IdLoss())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn"):
        ss.SiftingDataLoader(raw, torch.nn.Identity(), "ce")  # type: ignore[arg-type]


def test_a_scalar_loss_fails_before_any_training_step() -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(8), batch_size=4), torch.nn.Identity(), lambda m, b: b["x"].sum()
    )
    with pytest.raises(ss.LossFunctionError, match=r"shape \(4,\).*reduction='none'"):
        next(iter(loader))


def test_stats_dict_quantiles_and_logging(caplog: pytest.LogCaptureFixture) -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(100), batch_size=10), torch.nn.Identity(), IdLoss(),
        policy=ss.RelativeProbabilistic(beta=1.0, history=1000), log_interval=5, seed=0,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="smartsift"):
        list(loader)
    assert sum("smartsift epoch 0" in r.message for r in caplog.records) == 2
    d = loader.stats.as_dict()
    assert d["samples_seen"] == 100 and 0 < d["keep_rate"] < 1
    assert d["loss_p10"] <= d["loss_p50"] <= d["loss_p90"]
    assert d["scoring_s"] > 0 and d["selection_s"] > 0
    assert math.isfinite(d["recent_keep_rate"])


def test_sifted_training_learns_a_real_task_with_fewer_backward_passes() -> None:
    # Imported here, not at the top: the DDP jobs below are unpickled from this module in
    # spawned processes, where `conftest` may name the repository root's.
    from benchmarks.demo import ConvNet, evaluate, make_mnist1d
    from conftest import ce_loss

    train, (x_test, y_test) = make_mnist1d(num_samples=4000, seed=1)
    torch.manual_seed(0)
    model = ConvNet(width=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = ss.SiftingDataLoader(
        DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)),
        model, ce_loss, policy=ss.RelativeProbabilistic(beta=1.0, history=500),
        sift_delay=50, seed=0,
    )  # fmt: skip
    backpropagated = 0
    for _ in range(10):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            backpropagated += len(y)
    accuracy = evaluate(model, x_test, y_test)
    assert accuracy > 0.5  # chance is 0.1
    assert backpropagated < 0.75 * loader.stats.samples_seen
    assert backpropagated == loader.stats.samples_trained


def test_a_batch_that_cannot_join_the_buffer_fails_before_scoring() -> None:
    batches = [(torch.randn(8, 3), torch.arange(8)), (torch.randn(8, 5), torch.arange(8, 16))]
    scored = []

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        scored.append(batch[0].shape[1])
        return batch[1].float()

    loader = ss.SiftingDataLoader(batches, torch.nn.Identity(), loss, policy=ss.TopK(0.5))
    with pytest.raises(ValueError, match="pad sequences to a fixed length") as info:
        list(loader)
    assert scored == [3]  # the second batch was refused before its scoring pass
    assert "raw batch 1 of the epoch" in "".join(getattr(info.value, "__notes__", []))


def test_a_batch_size_larger_than_an_epoch_keeps_warns_once_and_stats_show_the_drop() -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(12), batch_size=4), torch.nn.Identity(), IdLoss(),
        policy=ss.TopK(keep=0.5), batch_size=8, drop_last=True, seed=0,
    )  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        for _ in range(3):
            assert list(loader) == []  # 6 kept per epoch: never a full batch of 8
    messages = [str(w.message) for w in caught if "trained on nothing" in str(w.message)]
    assert len(messages) == 1
    assert "batch_size=8" in messages[0] and "drop_last=False" in messages[0]
    assert loader.stats.samples_dropped == 18 and loader.stats.samples_trained == 0
    assert "dropped=18" in str(loader.stats)


def test_no_empty_epoch_warning_when_an_epoch_trains() -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(12), batch_size=4), torch.nn.Identity(), IdLoss(),
        policy=ss.TopK(keep=0.5), batch_size=4, drop_last=True, seed=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [len(b["id"]) for b in loader] == [4]
    assert "dropped=2" in str(loader.stats)


@pytest.mark.parametrize("repeat", [False, True])
def test_a_layout_that_cannot_join_is_refused_during_the_sift_delay(repeat: bool) -> None:
    # Sifting would start only in epoch 1; the third raw batch is refused in epoch 0 already.
    batches = [(torch.randn(4, 3), torch.arange(4)) for _ in range(2)]
    batches.append((torch.randn(4, 5), torch.arange(4)))
    scored: list[int] = []

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        scored.append(len(batch[1]))
        return batch[1].float()

    loader = ss.SiftingDataLoader(
        batches, torch.nn.Identity(), loss, policy=ss.TopK(0.5),
        sift_delay=len(batches), repeat_delay_per_epoch=repeat,
    )  # fmt: skip
    got: list[Any] = []
    with pytest.raises(ValueError, match="cannot be joined") as info:
        got.extend(loader)
    message = str(info.value)
    assert "torch.Size([5])" in message and "torch.Size([3])" in message  # both layouts
    assert "raw batch 2 of the epoch" in "".join(getattr(info.value, "__notes__", []))
    assert len(got) == 2 and scored == [] and loader.epoch == 0


def test_an_epoch_that_kept_nothing_is_not_blamed_on_drop_last() -> None:
    # Every loss is NaN and dropped: the epoch trains on nothing, but drop_last is off and no
    # kept sample was dropped, so a warning must not say so (nor advise drop_last=False).
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(8), batch_size=4), torch.nn.Identity(),
        lambda m, b: torch.full((len(b["id"]),), float("nan")),
        policy=ss.TopK(keep=0.5), nonfinite="drop",
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(loader) == []
    assert loader.stats.samples_kept == 0 and loader.stats.samples_dropped == 0
    messages = [str(w.message) for w in caught]
    assert not any("every kept sample was dropped" in m for m in messages), messages


def test_log_fn_is_called_every_log_interval_raw_batches_across_epochs() -> None:
    calls: list[tuple[int, int]] = []
    loader = ss.SiftingDataLoader(
        DataLoader(_id_data(64), batch_size=8),  # 8 raw batches an epoch
        torch.nn.Linear(3, 1),
        IdLoss(),
        ss.TopK(keep=0.5),
        log_interval=3,
        log_fn=lambda stats, step: calls.append((stats.raw_batches, step)),
    )
    for _ in range(2):
        for _ in loader:
            pass
    # Every 3rd raw batch pulled, the epoch ends (rounds that pull nothing) not counted.
    assert [raw for raw, _ in calls] == [3, 6, 9, 12, 15]
    assert all(step <= raw for raw, step in calls)


# ----------------------------------------------------------------------------- reducible loss
def _half_id_reference(batch: dict) -> torch.Tensor:
    """A reference loss that grows with the id twice as fast as ``LinearIdLoss``."""
    return batch["id"].float() / 50.0


def _ordered_data(n: int) -> list[dict]:
    """Samples with ids 0 to n - 1 (``LinearIdLoss`` rises with the id)."""
    return [{"id": torch.tensor(i), "x": torch.zeros(3)} for i in range(n)]


class LinearIdLoss:
    """A loss of id / 101: the higher the id, the higher the loss."""

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return batch["id"].float() / 101.0


def _reference_table(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32) / 50.0


@pytest.mark.parametrize("form", ["callable", "tensor"])
def test_a_reference_makes_the_policy_rank_the_loss_less_the_reference(form: str) -> None:
    # The loss rises with the id, the reference rises twice as fast: by the loss TopK keeps
    # the high ids of every raw batch, by loss - reference the low ones.
    reference: Any = _half_id_reference if form == "callable" else _reference_table(64)
    kept = {}
    for name, ref in (("loss", None), ("reducible", reference)):
        audit = ss.SiftAudit(id_key="id")
        loader = ss.SiftingDataLoader(
            DataLoader(_ordered_data(64), batch_size=8), torch.nn.Identity(), LinearIdLoss(),
            ss.TopK(keep=0.5), audit=audit, reference=ref, id_key="id", seed=0,
        )  # fmt: skip
        trained = sorted(_ids(list(loader)))
        kept[name] = trained
        record = audit.epoch(0)
        # The audit and the trace record the losses, never the scores.
        assert record.kept_losses.tolist() == pytest.approx([i / 101 for i in record.kept])
        assert sorted(loader.trace.kept_losses.tolist()) == pytest.approx(
            [i / 101 for i in trained]
        )
    assert kept["loss"] == [i for i in range(64) if i % 8 >= 4]
    assert kept["reducible"] == [i for i in range(64) if i % 8 < 4]


def test_the_loss_history_and_its_quantiles_hold_the_scores() -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_ordered_data(64), batch_size=8), torch.nn.Identity(), LinearIdLoss(),
        ss.RelativeProbabilistic(beta=1.0, history=64), reference=_half_id_reference, seed=0,
    )  # fmt: skip
    list(loader)
    scores = sorted(i / 101 - i / 50 for i in range(64))
    history = loader._selector.history
    assert history is not None and sorted(history.values().tolist()) == pytest.approx(scores)
    q = loader.stats.loss_quantiles
    assert q["p10"] < q["p50"] < q["p90"] <= 0.0  # scores, here all at most 0; losses are not


def test_auto_judges_the_losses_while_the_policy_ranks_the_scores() -> None:
    loader = ss.SiftingDataLoader(
        DataLoader(_ordered_data(64), batch_size=8), torch.nn.Identity(), LinearIdLoss(),
        ss.Auto(ss.TopK(keep=0.5), probe=2, every=6), reference=_half_id_reference, seed=0,
    )  # fmt: skip
    list(loader)
    state: Any = loader._selector.state
    recent = np.concatenate(list(state.recent))
    assert recent.size and (recent >= 0).all()  # the losses id / 101, never the scores
    assert math.isfinite(state.concentration())  # the scores' sum is negative: no concentration


class _CountingReference:
    """A callable reference that records how it was called."""

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.grad: list[bool] = []

    def __call__(self, batch: dict) -> torch.Tensor:
        self.batches.append(batch)
        self.grad.append(torch.is_grad_enabled())
        return torch.zeros(len(batch["id"]), requires_grad=True) + 0.1


def test_the_callable_runs_once_per_scored_raw_batch_on_its_batch_under_no_grad() -> None:
    reference, scored = _CountingReference(), []

    def loss_fn(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        scored.append(batch)
        return LinearIdLoss()(model, batch)

    loader = ss.SiftingDataLoader(
        DataLoader(_ordered_data(80), batch_size=8), torch.nn.Identity(), loss_fn,
        ss.TopK(keep=0.5), sift_delay=3, reference=reference, seed=0,
    )  # fmt: skip
    for _ in range(2):
        list(loader)
    # 10 raw batches an epoch, the first 3 of the run passed unscored: 17 scored batches.
    assert len(reference.batches) == len(scored) == 17
    assert all(a is b for a, b in zip(reference.batches, scored, strict=True))
    assert reference.grad == [False] * 17


def test_samples_without_a_reference_pass_unsifted_and_stay_out_of_the_history() -> None:
    table = _reference_table(64)
    unknown = [3, 4, 17, 40, 41, 42, 63]
    table[unknown] = float("nan")
    audit = ss.SiftAudit(id_key="id")
    loader = ss.SiftingDataLoader(
        DataLoader(_ordered_data(64), batch_size=8), torch.nn.Identity(), LinearIdLoss(),
        ss.RelativeProbabilistic(beta=2.0, history=500), audit=audit, reference=table,
        id_key="id", seed=0,
    )  # fmt: skip
    for _ in range(3):
        trained = set(_ids(list(loader)))
        assert set(unknown) <= trained  # every epoch
    stats = loader.stats
    assert stats.samples_passed == 3 * len(unknown)
    assert stats.samples_nonfinite == 0
    assert ss.engine.stats.conservation_errors(stats) == []
    record = audit.epoch(2)
    assert sorted(record.passed.tolist()) == unknown
    assert not set(unknown) & (set(record.kept.tolist()) | set(record.sifted.tolist()))
    history = loader._selector.history
    assert history is not None and len(history) == 3 * (64 - len(unknown))
    assert stats.samples_seen == stats.samples_kept + stats.samples_sifted == 3 * 64


def test_a_nan_loss_stays_under_nonfinite_with_a_reference() -> None:
    def loss_fn(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        losses = LinearIdLoss()(model, batch)
        return torch.where(batch["id"] == 5, float("nan"), losses)

    def make(nonfinite: str) -> ss.SiftingDataLoader:
        return ss.SiftingDataLoader(
            DataLoader(_ordered_data(16), batch_size=8), torch.nn.Identity(), loss_fn,
            ss.TopK(keep=0.5), reference=_half_id_reference, nonfinite=nonfinite, seed=0,
        )  # fmt: skip

    with pytest.raises(ValueError, match="loss_fn returned 1 non-finite loss"):
        list(make("raise"))
    dropping = make("drop")
    assert 5 not in _ids(list(dropping))
    assert dropping.stats.samples_nonfinite == 1 and dropping.stats.samples_passed == 0


def test_reference_errors_name_the_argument_and_the_fix() -> None:
    def make(reference: Any, id_key: Any = None) -> ss.SiftingDataLoader:
        return ss.SiftingDataLoader(
            DataLoader(_ordered_data(16), batch_size=8), torch.nn.Identity(), LinearIdLoss(),
            ss.TopK(keep=0.5), reference=reference, id_key=id_key,
        )  # fmt: skip

    with pytest.raises(ValueError, match="`id_key` is None"):
        make(torch.ones(16))
    with pytest.raises(TypeError, match="Expected `reference` to be a callable"):
        make("reference.pt")
    with pytest.raises(ValueError, match=r"1-D Tensor with one loss per sample id"):
        make(torch.ones(16, 1), id_key="id")
    with pytest.raises(ss.LossFunctionError, match=r"reference must return .*shape \(8,\)"):
        next(iter(make(lambda batch: torch.ones(4))))
    with pytest.raises(ValueError, match=r"ids 0 to 9, but the batch holds the id\(s\) \[10,"):
        list(make(torch.ones(10), id_key="id"))
    with pytest.raises(ValueError, match=r"found no entry 'idx'"):
        next(iter(make(torch.ones(16), id_key="idx")))


class _Clock:
    """A stand-in for the ``time`` module: only what the reference adds makes time pass."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_the_references_time_counts_as_scoring_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartsift.modes import epochs

    clock = _Clock()
    monkeypatch.setattr(epochs, "time", clock)

    def reference(batch: dict) -> torch.Tensor:
        clock.now += 1000.0
        return torch.zeros(len(batch["id"]))

    loader = ss.SiftingDataLoader(
        DataLoader(_ordered_data(48), batch_size=8), torch.nn.Identity(), LinearIdLoss(),
        ss.TopK(keep=0.5), reference=reference,
    )  # fmt: skip
    list(loader)
    stats = loader.stats
    assert stats.scoring_s == 6 * 1000.0  # six scored raw batches
    assert stats.selection_s == 0.0


def test_a_state_saved_with_one_score_setting_does_not_load_into_the_other() -> None:
    def make(reference: Any) -> ss.SiftingDataLoader:
        return ss.SiftingDataLoader(
            DataLoader(_ordered_data(32), batch_size=8), torch.nn.Identity(), LinearIdLoss(),
            ss.RelativeProbabilistic(beta=1.0), reference=reference, id_key="id", seed=0,
        )  # fmt: skip

    plain, referenced = make(None), make(_half_id_reference)
    for loader in (plain, referenced):
        it = iter(loader)
        next(it)
        del it
    with pytest.raises(ValueError, match=r"ranked the loss \(no `reference`\), but this loader"):
        make(_half_id_reference).load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match=r"ranked loss - reference .* this loader ranks the loss"):
        make(None).load_state_dict(referenced.state_dict())
    # Either form of reference ranks the same scores: a state moves between them.
    make(_reference_table(32)).load_state_dict(referenced.state_dict())
    make(None).load_state_dict(plain.state_dict())


def test_a_loader_with_a_reference_resumes_exactly() -> None:
    from _resume import assert_resume_matches

    table = torch.rand(72, generator=torch.Generator().manual_seed(0)) / 2
    table[[5, 30]] = float("nan")

    def make() -> ss.SiftingDataLoader:
        return ss.SiftingDataLoader(
            DataLoader(_ordered_data(72), batch_size=8), torch.nn.Identity(), IdLoss(),
            ss.RelativeProbabilistic(beta=1.0, history=40), batch_size=6,
            reference=table, id_key="id", seed=0,
        )  # fmt: skip

    assert_resume_matches(make, [0, 3, 7, 10])


def reference_ranks(rank: int, world_size: int) -> dict[str, Any]:
    """Two ranks sift with a tensor reference; ids 8 and 9 (one on each rank) have none."""
    from torch.utils.data import DistributedSampler

    data = _ordered_data(64)
    table = _reference_table(64)
    table[[8, 9]] = float("nan")
    sampler = DistributedSampler(data, world_size, rank, shuffle=False)
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=8, sampler=sampler), torch.nn.Identity(), LinearIdLoss(),
        ss.TopK(keep=0.5), reference=table, id_key="id", seed=0,
    )  # fmt: skip
    batches = list(loader)
    return {"steps": len(batches), "ids": _ids(batches), "passed": loader.stats.samples_passed}


def test_under_ddp_every_rank_scores_its_own_batch_and_the_ranks_stay_even() -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed gloo")
    from _ddp import run_ranks

    a, b = run_ranks(reference_ranks, 2, timeout=120)
    assert a["steps"] == b["steps"]
    assert (a["passed"], b["passed"]) == (1, 1)
    trained = set(a["ids"]) | set(b["ids"])
    # Each round pairs ids 16r..16r+15 (even ids on rank 0, odd on rank 1); by loss -
    # reference the low half of each is kept, and 8 and 9 pass without a reference.
    assert {8, 9} <= trained
    assert {i for i in trained if i >= 16} == {i for i in range(16, 64) if i % 16 < 8}
    assert {i for i in trained if i < 16} <= set(range(10))


def _noisy_task(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four Gaussian classes in 8 dimensions; 20 % of the labels flipped to another class."""
    g = torch.Generator().manual_seed(seed)
    n, dim, classes = 1600, 8, 4
    centers = torch.randn(classes, dim, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    flipped = torch.rand(n, generator=g) < 0.2
    noisy = torch.where(flipped, (y + torch.randint(1, classes, (n,), generator=g)) % classes, y)
    return x, noisy, flipped


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _indexed_ce(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    _, x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def test_the_reducible_loss_keeps_fewer_flipped_labels_than_the_loss() -> None:
    x, y, flipped = _noisy_task(0)
    held_out, train = slice(0, 400), slice(400, 1600)
    small = _mlp(1)  # the reference: trained on the held-out slice only
    opt = torch.optim.Adam(small.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(small(x[held_out]), y[held_out]).backward()
        opt.step()
    small.eval()
    data = list(zip(torch.arange(1200), x[train], y[train], strict=True))
    flipped_share = {}
    for name, reference in (("loss", None), ("reducible", lambda b: _indexed_ce(small, b))):
        model = _mlp(2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        audit = ss.SiftAudit(id_key=0)
        raw = DataLoader(
            data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
        loader = ss.SiftingDataLoader(
            raw, model, _indexed_ce, ss.TopK(0.3), seed=0, audit=audit, reference=reference
        )
        for _ in range(4):
            for batch in loader:
                opt.zero_grad()
                _indexed_ce(model, batch).mean().backward()
                opt.step()
        kept = torch.cat([torch.from_numpy(audit.epoch(e).kept) for e in (1, 2, 3)])
        flipped_share[name] = flipped[train][kept].float().mean().item()
    # 20 % of the labels are flipped. High loss chases them (about half of the kept samples
    # here); loss - reference keeps fewer than their share (about an eighth).
    assert flipped_share["loss"] > 0.35
    assert flipped_share["reducible"] < 0.2
    assert flipped_share["reducible"] < flipped_share["loss"] / 2
