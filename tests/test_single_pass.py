"""The single-pass benchmark's pure parts: the stream, the arms, work units, the frontier."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

import smartsift as ss
from benchmarks import single_pass as sp
from benchmarks.harness import Task, TrainingRun, train_side_by_side
from smartsift.modes.schedules import DataSchedule


def test_chunks_cover_the_pool_with_distinct_seeds() -> None:
    parts = sp.chunks(45_000, 20_000)
    assert [size for _, size in parts] == [20_000, 20_000, 5_000]
    assert len({seed for seed, _ in parts}) == 3 and sp.TEST_SEED not in {s for s, _ in parts}
    assert sp.chunks(0, 10) == []
    with pytest.raises(ValueError, match="chunk"):
        sp.chunks(10, 0)


def test_a_chunk_has_exactly_its_size_and_chunks_differ() -> None:
    x0, y0 = sp._generate((0, 37))  # not a multiple of mnist1d's 10 classes
    x1, _ = sp._generate((1, 37))
    assert x0.shape == (37, 40) and y0.shape == (37,)
    assert not torch.equal(x0, x1)


def test_the_setting_s_pool_holds_the_longest_run_and_the_held_out_slice() -> None:
    for setting in (sp.FULL, sp.SMOKE):
        longest = max(a.samples(setting.n_train) for a in sp.arms())
        assert setting.pool == setting.held_out + longest


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_stream_never_repeats_a_sample_and_never_holds_the_held_out_slice(seed: int) -> None:
    held, stream = sp.stream_layout(1_000, held_out=100, seed=seed)
    assert len(held) == 100 and len(stream) == 900
    assert len(set(stream.tolist())) == 900  # no index twice
    assert set(held.tolist()).isdisjoint(stream.tolist())
    assert sorted(held.tolist() + stream.tolist()) == list(range(1_000))
    # Another seed reads another order; the same seed the same one.
    other, _ = sp.stream_layout(1_000, held_out=100, seed=seed + 1)
    assert not torch.equal(held, other)
    assert torch.equal(held, sp.stream_layout(1_000, held_out=100, seed=seed)[0])


def test_stream_layout_refuses_a_held_out_slice_larger_than_the_pool() -> None:
    with pytest.raises(ValueError, match="held_out"):
        sp.stream_layout(10, held_out=11, seed=0)


def test_flipped_labels_do_not_follow_the_stream_order() -> None:
    # The flips have their own seed: had they used a stream's, its first samples would all be
    # flipped.
    y = torch.arange(10_000) % 10
    stream = sp.Stream(y.float()[:, None].expand(-1, 40), y, y.float()[:1, None], y[:1])
    labels, flipped = stream.labels("noisy")
    assert bool((labels[flipped] != y[flipped]).all()) and bool(
        (labels[~flipped] == y[~flipped]).all()
    )
    for seed in sp.SEEDS:
        held, order = sp.stream_layout(10_000, held_out=1_000, seed=seed)
        for part in (held, order[:2_000]):
            assert 0.15 < float(flipped[part].float().mean()) < 0.25
    clean, none = stream.labels("clean")
    assert torch.equal(clean, y) and not none.any()
    with pytest.raises(ValueError, match="key"):
        stream.labels("other")


def test_arms_read_what_they_train_in_plain_s_step_count() -> None:
    names = [a.name for a in sp.arms()]
    assert len(names) == len(set(names)) == len(sp.FRACTIONS) + 3 * len(sp.RATIOS)
    assert sp.PLAIN_FULL in names
    loss4 = sp.Arm("loss", 4)
    assert loss4.keep == 0.25 and loss4.samples(1_000) == 4_000
    assert sp.Arm(None, 0.25).samples(1_000) == 250 and sp.Arm(None, 0.25).keep == 1.0
    with pytest.raises(ValueError, match="score"):
        sp.Arm("gradient", 2)
    with pytest.raises(ValueError, match="read"):
        sp.Arm("loss", 1)
    with pytest.raises(ValueError, match="read"):
        sp.Arm(None, 0)


def test_work_units_count_every_pass() -> None:
    assert sp.work_units(1_000, 0, 1_000) == 1.0
    # Ratio 4: 4000 scored at F/T 0.2, 1000 trained: 1.8.
    assert sp.work_units(1_000, 4_000, 1_000, f_over_t=0.2) == 1.8
    # The reference: 500 samples trained at T_ref/T 0.4, forward on the 4000 scored at 0.05.
    assert sp.work_units(
        1_000, 4_000, 1_000, f_over_t=0.2, ref_trained=500, ref_t_over_t=0.4, ref_f_over_t=0.05
    ) == pytest.approx(1.8 + 0.2 + 0.2)
    with pytest.raises(ValueError, match="n_train"):
        sp.work_units(1, 0, 0)


def test_outcome_work_charges_the_reference_to_the_reducible_arms_only() -> None:
    costs = sp.Costs(
        step_s=1e-4,
        scoring_s={2: 2e-5, 4: 1.5e-5},
        ref_step_s=4e-5,
        ref_scoring_s={2: 1e-5, 4: 5e-6},
    )
    assert costs.f_over_t(2) == pytest.approx(0.2) and costs.ref_t_over_t == pytest.approx(0.4)

    def outcome(score: str | None, read: float, scored: int, ref_trained: int) -> sp.Outcome:
        return sp.Outcome(
            "clean", 0, "x", score, read, 0.9, scored, scored, 1_000, 10, 0, ref_trained, 0.5
        )

    assert sp.outcome_work(outcome(None, 1.0, 0, 0), costs, 1_000) == 1.0
    assert sp.outcome_work(outcome("loss", 4, 4_000, 0), costs, 1_000) == pytest.approx(1.6)
    assert sp.outcome_work(outcome("uniform", 2, 2_000, 0), costs, 1_000) == pytest.approx(1.4)
    reducible = sp.outcome_work(outcome("reducible", 4, 4_000, 500), costs, 1_000)
    assert reducible == pytest.approx(1.6 + 0.5 * 0.4 + 4 * 0.05)


def test_gains_over_the_frontier_interpolate_between_plain_end_points() -> None:
    points = [(0.25, 0.80), (0.5, 0.86), (1.0, 0.90), (2.0, 0.94)]
    gains = sp.gains_over_frontier(points, [(1.5, 0.93), (0.75, 0.87), (3.0, 0.95), (0.1, 0.5)])
    assert gains[:3] == pytest.approx([0.01, -0.01, 0.01])  # beyond 2.0: the last point, flat
    assert math.isnan(gains[3])  # below the cheapest point: unknown


def test_noisy_share() -> None:
    assert sp.noisy_share(1, 4) == 0.25 and math.isnan(sp.noisy_share(0, 0))


def _counting_task(ids: torch.Tensor, seen: list[torch.Tensor]) -> Task:
    x = torch.randn(len(ids), 40, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (len(ids),), generator=torch.Generator().manual_seed(1))

    def train_loss(model: torch.nn.Module, batch: object) -> torch.Tensor:
        seen.append(batch[0])  # type: ignore[index]
        return sp._mean_loss(model, batch)

    return Task(
        build_model=lambda: sp.ConvNet(width=4),
        train_set=TensorDataset(ids, x, y),
        loss_fn=sp._loss,
        evaluate=lambda model: 0.0,
        train_loss=train_loss,
    )


@pytest.mark.parametrize("score", ["plain", "loss", "reducible"])
def test_a_run_trains_each_sample_of_its_prefix_at_most_once(score: str) -> None:
    _, stream = sp.stream_layout(600, held_out=40, seed=0)
    read = stream[: 2 * 128] if score != "plain" else stream[:128]
    seen: list[torch.Tensor] = []
    task = _counting_task(read, seen)
    args: dict[str, object] = dict(epochs=1, lr=1e-3, seed=0, schedule="cosine")
    if score == "plain":
        run = TrainingRun("plain", task, batch_size=16, **args)  # type: ignore[arg-type]
    else:
        reference = sp.ConvNet(width=2).eval()
        kwargs: dict[str, object] = dict(batch_size=32, refined_batch_size=16, **args)
        if score == "loss":
            run = TrainingRun("sifted", task, policy=ss.TopK(keep=0.5), **kwargs)  # type: ignore[arg-type]
        else:
            run = sp._SiftedRun(
                "sifted", task, policy=ss.TopK(keep=0.5),
                reference=lambda batch: sp._loss(reference, batch), **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip
    # Warm-up copies train on the first samples too; count the run's own steps only.
    train_side_by_side([run])
    trained = torch.cat(seen[3:]).tolist()  # the first 3 calls are the warm-up's
    assert len(trained) == len(set(trained)) == 128  # one step size's worth per raw batch
    assert set(trained) <= set(read.tolist())
    assert run.result.steps == 8 and run.result.final_lr == 0.0
    if score != "plain":
        assert run.result.scored[-1] == 256  # every sample read was scored once


def test_the_reducible_run_ranks_loss_minus_reference() -> None:
    _, stream = sp.stream_layout(300, held_out=0, seed=0)
    task = _counting_task(stream[:64], [])
    reference = sp.ConvNet(width=2).eval()
    run = sp._SiftedRun(
        "sifted", task, policy=ss.TopK(keep=0.5), reference=lambda b: sp._loss(reference, b),
        epochs=1, batch_size=32, refined_batch_size=16, lr=1e-3, seed=0, schedule="cosine",
    )  # fmt: skip
    assert run.loader.reference is not None
    assert isinstance(run.data_schedule, DataSchedule) and run.data_schedule.loader is run.loader


def test_smoke_run_renders_both_tasks_and_two_targets() -> None:
    section = sp.run(smoke=True)
    assert "### Clean labels" in section.body and "flipped among trained" in section.body
    for arm in sp.arms():
        assert arm.name in section.body or f"`{arm.score}`, ratio {arm.read:g}" in section.body
    assert len(section.targets) == 2
    for target in section.targets:
        assert isinstance(target.met, bool) and str(target) in section.markdown()


def test_the_benchmark_is_registered() -> None:
    from benchmarks import run as bench_run

    assert "single_pass" in bench_run.BENCHMARKS and "single_pass" in bench_run.available()


def _row(name: str, score: str | None, read: float, final: float, gain: float, noisy: float):
    return sp.Row(name, score, read, [final], [read], [0.0], [gain], [noisy], [100])


@pytest.mark.parametrize("flipped", [0.0, 0.2])
def test_the_report_says_why_no_setting_beat_the_frontier(flipped: float) -> None:
    table = [
        _row(sp.PLAIN_FULL, None, 1, 0.90, 0.0, flipped),
        _row("plain 2x", None, 2, 0.95, 0.0, flipped),
        _row("loss 2", "loss", 2, 0.91, -0.03, 2 * flipped),
        _row("reducible 2", "reducible", 2, 0.85, -0.10, flipped),
    ]
    text = sp.why_not(table, [0.5])
    assert "gains +5.00 points from reading 2x" in text
    assert "50.0 % test accuracy against plain 1x's 90.0 %" in text
    assert "ends below the loss at every ratio" in text
    assert ("40.0 % of the samples" in text) == (flipped > 0)
    table[3] = _row("reducible 2", "reducible", 2, 0.93, 0.01, flipped)
    assert "ends below the loss" not in sp.why_not(table, [0.5])
