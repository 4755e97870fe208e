"""Faults and bad input: the loader fails clearly, counts what it lost, and recovers.

Each test provokes one fault (non-finite losses, a failing loss function or worker, an
interrupt, odd batch sizes, an empty dataset, ...) and checks what the user sees and that the
loader's counters still add up and it can be iterated again.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import smartsift as ss

Batch = tuple[torch.Tensor, torch.Tensor]


def _data(n: int) -> list[tuple[torch.Tensor, int]]:
    """Samples ``(x, id)`` whose feature is the id itself."""
    return [(torch.tensor([float(i)]), i) for i in range(n)]


def _id_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """A fixed, well-spread loss per sample id (the model is not used)."""
    return (batch[1].double() * 0.6180339887) % 1.0


def _loader(raw: Any, loss_fn: Callable[..., torch.Tensor] = _id_loss, **kw: Any) -> Any:
    kw.setdefault("policy", ss.TopK(keep=0.75))
    kw.setdefault("seed", 0)
    return ss.SiftingDataLoader(raw, torch.nn.Identity(), loss_fn, **kw)


def _ids(batches: list[Batch]) -> list[int]:
    return [i for b in batches for i in b[1].tolist()]


def _assert_counts_add_up(loader: ss.SiftingDataLoader) -> None:
    s = loader.stats
    assert s.samples_seen == s.samples_kept + s.samples_sifted
    assert s.samples_kept == s.samples_trained + s.samples_dropped + s.samples_buffered


def _nan_at(bad: set[int], value: float = math.nan) -> Callable[..., torch.Tensor]:
    def loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        out = _id_loss(model, batch)
        for k, i in enumerate(batch[1].tolist()):
            if i in bad:
                out[k] = value
        return out

    return loss


# ------------------------------------------------------------------ non-finite losses
def test_nonfinite_raise_names_the_count_and_the_batch() -> None:
    loader = _loader(DataLoader(_data(24), batch_size=8), _nan_at({10, 11}, math.inf))
    with pytest.raises(ValueError, match=r"2 non-finite loss\(es\)") as info:
        list(loader)
    assert any("raw batch 1 of the epoch" in note for note in info.value.__notes__)
    _assert_counts_add_up(loader)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_drop_sifts_them_and_keeps_them_out_of_the_history(value: float) -> None:
    bad = {3, 9, 17}
    audit = ss.SiftAudit(id_key=1)
    loader = _loader(
        DataLoader(_data(32), batch_size=8),
        _nan_at(bad, value),
        policy=ss.QuantileThreshold(exclude=0.25, history=64),
        nonfinite="drop",
        audit=audit,
    )
    trained = _ids(list(loader))
    assert not bad & set(trained)
    assert bad <= set(audit.epoch(0).sifted.tolist())
    s = loader.stats
    assert s.samples_nonfinite == 3 and s.samples_seen == 32
    assert all(math.isfinite(q) for q in s.loss_quantiles.values())
    assert loader.stats.loss_quantiles and len(_history(loader)) == 29
    _assert_counts_add_up(loader)


def test_nonfinite_keep_trains_on_them() -> None:
    bad = {0, 5, 13}
    loader = _loader(
        DataLoader(_data(16), batch_size=8),
        _nan_at(bad),
        policy=ss.RelativeProbabilistic(beta=3.0, history=64),
        nonfinite="keep",
    )
    trained = _ids(list(loader))
    assert bad <= set(trained)
    assert loader.stats.samples_nonfinite == 3
    assert len(_history(loader)) == 13


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_an_all_nan_batch(mode: str) -> None:
    all_of_batch_1 = set(range(8, 16))
    loader = _loader(
        DataLoader(_data(24), batch_size=8),
        _nan_at(all_of_batch_1),
        policy=ss.RelativeProbabilistic(beta=1.0, history=64),
        nonfinite=mode,
        batch_size=4,
    )
    trained = set(_ids(list(loader)))
    if mode == "drop":
        assert not trained & all_of_batch_1
    else:
        assert all_of_batch_1 <= trained
    assert loader.stats.samples_nonfinite == 8
    _assert_counts_add_up(loader)
    with pytest.raises(ValueError, match=r"8 non-finite"):
        list(_loader(DataLoader(_data(24), batch_size=8), _nan_at(all_of_batch_1)))


# ------------------------------------------------------------------ a failing loss function
def test_a_loss_fn_error_reaches_the_user_and_the_loader_recovers() -> None:
    failing = {"on": True}

    def loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        if failing["on"] and 20 in batch[1].tolist():
            raise RuntimeError("CUDA out of memory (simulated)")
        return _id_loss(model, batch)

    reference = _ids(list(_loader(DataLoader(_data(40), batch_size=8), batch_size=4)))
    loader = _loader(DataLoader(_data(40), batch_size=8), loss, batch_size=4)
    seen = []
    with pytest.raises(RuntimeError, match="simulated") as info:
        for batch in loader:
            seen.append(batch)
    assert "smartsift: raised on raw batch 2 of the epoch." in info.value.__notes__
    assert _ids(seen) == reference[: len(_ids(seen))]  # batches before the failure came out
    assert _ids(seen) and max(_ids(seen)) < 16
    buffered = loader.stats.samples_buffered
    _assert_counts_add_up(loader)

    failing["on"] = False
    assert _ids(list(loader)) == reference  # a fresh epoch from the start
    s = loader.stats
    assert s.epochs == 1 and s.samples_dropped == buffered
    _assert_counts_add_up(loader)


def test_a_loss_on_the_meta_device_fails_with_a_note_and_the_loader_recovers() -> None:
    on_meta = {"yes": True}

    def loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        out = _id_loss(model, batch)
        return out.to("meta") if on_meta["yes"] else out

    loader = _loader(DataLoader(_data(16), batch_size=8), loss)
    with pytest.raises(NotImplementedError, match="meta") as info:
        list(loader)
    assert "smartsift: raised on raw batch 0 of the epoch." in info.value.__notes__
    on_meta["yes"] = False
    assert len(_ids(list(loader))) == 12


def test_a_loss_with_gradients_attached_trains_nothing_and_is_detached() -> None:
    model = torch.nn.Linear(1, 1)
    outputs: list[torch.Tensor] = []

    def loss(m: torch.nn.Module, batch: Batch) -> torch.Tensor:
        with torch.enable_grad():  # the user turns autograd back on inside the scoring pass
            out = (m(batch[0]).squeeze(1) - 1.0) ** 2
        outputs.append(out)
        return out

    loader = ss.SiftingDataLoader(
        DataLoader(_data(24), batch_size=8), model, loss, ss.TopK(keep=0.5), seed=0
    )
    batches = list(loader)
    assert outputs and all(o.requires_grad for o in outputs)  # gradients were attached
    assert len(_ids(batches)) == 12
    assert model.weight.grad is None and model.bias.grad is None  # nothing ran backward
    assert all(not b[0].requires_grad for b in batches)


class ModeFlipper(torch.nn.Module):
    """A model whose forward switches itself (and a submodule) to train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Dropout(0.5)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        self.train()
        return x


@pytest.mark.parametrize("user_mode", [True, False])
def test_a_model_that_changes_its_mode_inside_forward_gets_its_mode_back(user_mode: bool) -> None:
    model = ModeFlipper()
    model.train(user_mode)
    model.inner.train(not user_mode)  # a mixed setting, to be restored exactly

    def loss(m: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return m(batch[0]).squeeze(1)

    loader = ss.SiftingDataLoader(
        DataLoader(_data(24), batch_size=8), model, loss, ss.TopK(keep=0.5), seed=0
    )
    for _ in loader:
        assert model.training is user_mode and model.inner.training is (not user_mode)
    assert model.modes == [False, False, False]  # scored in eval mode every time


# ------------------------------------------------------------------ odd data
@pytest.mark.parametrize("drop_last", [False, True])
def test_an_empty_dataset_yields_nothing_every_epoch(drop_last: bool) -> None:
    loader = _loader(DataLoader(_data(0), batch_size=8), drop_last=drop_last)
    for epoch in range(2):
        assert list(loader) == []
        s = loader.stats
        assert s.epochs == epoch + 1 and s.samples_seen == s.steps == s.raw_batches == 0
    assert loader.batch_size == 8  # the wrapped loader's
    assert loader.state_dict()["cursor"]["in_epoch"] is False


def test_batch_size_one() -> None:
    loader = _loader(
        DataLoader(_data(30), batch_size=1),
        policy=ss.RelativeProbabilistic(beta=1.0, history=16),
        drop_last=True,
    )
    for _ in range(2):
        batches = list(loader)
        assert all(len(b[1]) == 1 for b in batches)
        assert 0 < len(batches) < 30
    s = loader.stats
    assert s.samples_dropped == 0 and s.samples_trained == s.samples_kept
    _assert_counts_add_up(loader)


def test_raw_batches_larger_and_smaller_than_the_others() -> None:
    # A batch sampler with uneven batches: 8, 20, 3, 8, 1 samples.
    bounds = [0, 8, 28, 31, 39, 40]
    batch_sampler = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]
    loader = _loader(DataLoader(_data(40), batch_sampler=batch_sampler), batch_size=6)
    batches = list(loader)
    sizes = [len(b[1]) for b in batches]
    assert loader.batch_size == 6
    assert all(s == 6 for s in sizes[:-1]) and 0 < sizes[-1] <= 6
    ids = _ids(batches)
    assert ids == sorted(set(ids)) and len(ids) == loader.stats.samples_kept == 31
    # TopK keeps ceil(75 %) of each raw batch, whatever its size.
    assert loader.stats.samples_kept == 6 + 15 + 3 + 6 + 1


class Stream(IterableDataset[tuple[torch.Tensor, int]]):
    """An iterable dataset that claims ``claimed`` samples but ends after ``actual``.

    With workers, worker 0 ends after 3 samples and the others run to ``actual``.
    """

    def __init__(self, claimed: int, actual: int) -> None:
        self.claimed, self.actual = claimed, actual

    def __len__(self) -> int:
        return self.claimed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            yield from _data(self.actual)
            return
        mine = _data(self.actual)[info.id :: info.num_workers]
        yield from (mine[:3] if info.id == 0 else mine)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_iterable_dataset_that_ends_early(workers: int) -> None:
    raw = DataLoader(Stream(claimed=100, actual=37), batch_size=8, num_workers=workers)
    loader = _loader(raw, policy=ss.Uniform(keep=0.6), batch_size=5)
    expected_seen = 37 if workers == 0 else 3 + 18  # worker 1 holds the odd ids: 18 of them
    for epoch in range(2):
        batches = list(loader)
        sizes = [len(b[1]) for b in batches]
        assert all(s == 5 for s in sizes[:-1]) and (not sizes or sizes[-1] <= 5)
        assert loader.stats.samples_seen == expected_seen * (epoch + 1)
        assert len(set(_ids(batches))) == len(_ids(batches))
        _assert_counts_add_up(loader)
    assert loader.stats.samples_buffered == 0


class FailingDataset(Dataset[tuple[torch.Tensor, int]]):
    """Raises in ``__getitem__`` for one index while ``fail`` is set."""

    def __init__(self, n: int, bad: int) -> None:
        self.n, self.bad, self.fail = n, bad, True

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.fail and index == self.bad:
            raise OSError(f"corrupt record {index}")
        return torch.tensor([float(index)]), index


def test_a_failing_worker_surfaces_and_the_loader_recovers() -> None:
    data = FailingDataset(48, bad=21)
    loader = _loader(DataLoader(data, batch_size=4, num_workers=2), batch_size=4)
    reference = _ids(list(_loader(DataLoader(_data(48), batch_size=4), batch_size=4)))
    with pytest.raises(OSError, match="corrupt record 21") as info:
        list(loader)
    assert "smartsift: raised while loading raw batch 5 of the epoch." in info.value.__notes__
    # The traceback's frames hold the failed worker iterator in a reference cycle; PyTorch takes
    # 10 s to shut such an iterator down when the cyclic GC finds it, so let it go right away.
    info.value.__traceback__ = None
    del info
    _assert_counts_add_up(loader)
    buffered = loader.stats.samples_buffered

    data.fail = False  # fresh workers copy the repaired dataset
    assert _ids(list(loader)) == reference
    s = loader.stats
    assert s.epochs == 1 and s.samples_dropped == buffered
    _assert_counts_add_up(loader)


# ------------------------------------------------------------------ interrupted iteration
def test_keyboard_interrupt_in_loss_fn_abandons_the_epoch() -> None:
    calls = {"n": 0}

    def loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return _id_loss(model, batch)

    audit = ss.SiftAudit(id_key=1)
    loader = _loader(DataLoader(_data(40), batch_size=8), loss, batch_size=4, audit=audit)
    first = []
    with pytest.raises(KeyboardInterrupt):
        for batch in loader:
            first.append(batch)
    left = loader.stats.samples_buffered
    assert left > 0  # kept samples were waiting when the interrupt hit
    _assert_counts_add_up(loader)

    again = list(loader)  # a fresh epoch, from the first raw batch
    assert _ids(again)[: len(_ids(first))] == _ids(first)
    s = loader.stats
    assert s.epochs == 1 and s.samples_dropped == left and s.samples_buffered == 0
    assert s.samples_seen == 24 + 40  # the interrupted raw batch was never counted as seen
    assert len(audit.epoch(0).dropped) == left  # the audit names the abandoned samples
    assert set(audit.never_trained(ids=40).tolist()) == set(range(40)) - set(_ids(again))
    _assert_counts_add_up(loader)


def test_leaving_an_epoch_early_counts_the_buffer_as_dropped() -> None:
    loader = _loader(DataLoader(_data(40), batch_size=8), batch_size=4)
    for _ in loader:
        break  # the generator is closed here
    left = loader.stats.samples_buffered
    assert left == 2  # 6 kept of the first raw batch, 4 yielded
    assert len(_ids(list(loader))) == 30
    assert loader.stats.samples_dropped == left
    _assert_counts_add_up(loader)


def test_iterating_the_same_loader_twice_at_once_is_refused() -> None:
    loader = _loader(DataLoader(_data(40), batch_size=8))
    first = iter(loader)
    next(first)
    with pytest.raises(RuntimeError, match="already being iterated"):
        iter(loader)
    with pytest.raises(RuntimeError, match="already being iterated"):
        list(loader)
    assert len(_ids(list(first))) == 30 - 8  # the first iterator is unharmed
    assert len(_ids(list(loader))) == 30  # and once it is done, a new one may start


# ------------------------------------------------------------------ a known gap
def test_per_sample_list_fields_stay_with_their_samples() -> None:
    data = [{"id": i, "tags": ["a", f"t{i}"]} for i in range(16)]

    def loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return (batch["id"].double() * 0.6180339887) % 1.0

    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=8), torch.nn.Identity(), loss, ss.TopK(keep=0.5), seed=0
    )
    for batch in loader:
        assert list(batch["tags"][1]) == [f"t{i}" for i in batch["id"].tolist()]


# ------------------------------------------------------------------ audit input
def test_an_audit_whose_ids_are_not_in_the_batch_says_how_to_add_them() -> None:
    def loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, 0].double()

    plain = DataLoader([torch.tensor([float(i)]) for i in range(8)], batch_size=4)
    loader = ss.SiftingDataLoader(
        plain, torch.nn.Identity(), loss, ss.TopK(0.5), audit=ss.SiftAudit(id_key="index")
    )
    with pytest.raises(ValueError, match="IndexedDataset"):
        list(loader)
    wrong = _loader(DataLoader(_data(8), batch_size=4), audit=ss.SiftAudit(id_key=0))
    with pytest.raises(ValueError, match=r"expected 4 integer sample ids.*shape \(4, 1\)"):
        list(wrong)
    with pytest.raises(TypeError, match="id_key"):
        ss.SiftAudit(id_key=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SiftAudit"):
        _loader(DataLoader(_data(8), batch_size=4), audit="idx")


def test_indexed_dataset_ids_for_dict_samples_and_the_audit_json() -> None:
    import json

    samples = [{"x": torch.tensor([float(i)]), "name": f"s{i}"} for i in range(20)]
    data = ss.IndexedDataset(samples)
    assert data[3]["index"] == 3 and len(data) == 20
    with pytest.raises(ValueError, match="already has it"):
        ss.IndexedDataset([{"index": 1}])[0]

    def loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return batch["x"][:, 0].double()

    audit = ss.SiftAudit(id_key="index")
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)),
        torch.nn.Identity(),
        loss,
        ss.TopK(keep=0.4),
        sift_delay=1,
        audit=audit,
    )
    trained = {i for b in loader for i in b["index"].tolist()}
    record = audit.epoch(0)
    assert len(record.passed) == 5 and len(record.kept) == 6 and len(record.sifted) == 9
    assert set(audit.never_trained().tolist()) == set(range(20)) - trained
    saved = json.loads(json.dumps(audit.to_dict()))
    assert saved["epochs"]["0"]["sifted"] == record.sifted.tolist()
    assert saved["epochs"]["0"]["sifted_losses"] == record.sifted_losses.tolist()


def _history(loader: ss.SiftingDataLoader) -> torch.Tensor:
    """The loss history's values, as the loader's checkpoint holds them."""
    values: torch.Tensor = loader.state_dict()["selector"]["history"]["values"]
    return values
