"""Tests of the pilot run (``smartsift.profile``) and its cost model (``ProfileReport``)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.tools.profiling import (
    ADVICE_KEEP,
    MIN_SPEEDUP,
    SIFTING_CAVEAT,
    ProfileReport,
    advise_mode,
    loss_concentration,
    reuse_run_speedup,
)


def _ce(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _loader(n: int = 256, dim: int = 16, batch_size: int = 32, classes: int = 3) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class _SlowBackward(torch.autograd.Function):
    """Identity forward; a backward that does a lot of extra (discarded) work."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        w = torch.ones(192, 192)
        for _ in range(40):
            w = torch.tanh(w @ w / 192)
        return grad + 0 * w.sum()


class _ExpensiveBackwardNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if torch.is_grad_enabled():
            h = _SlowBackward.apply(h)
        return self.head(torch.relu(h))


def _frozen_extractor_net() -> torch.nn.Module:
    layers: list[torch.nn.Module] = [torch.nn.Linear(16, 768), torch.nn.ReLU()]
    for _ in range(5):
        layers += [torch.nn.Linear(768, 768), torch.nn.ReLU()]
    extractor = torch.nn.Sequential(*layers)
    extractor.requires_grad_(False)
    return torch.nn.Sequential(extractor, torch.nn.Linear(768, 3))


def _report(**kw: Any) -> ProfileReport:
    base = ProfileReport(
        data_s=0.1, scoring_s=1.0, selection_s=0.1, forward_s=1.0, backward_s=2.0, optimizer_s=0.5
    )
    return dataclasses.replace(base, **kw)


# ------------------------------------------------------------------ the cost model
def test_formula_matches_documentation() -> None:
    r = _report()
    t = 1.0 + 2.0 + 0.5
    assert r.step_s == pytest.approx(t)
    for keep in (0.0, 0.25, 0.5, 1.0):
        expected = (0.1 + t) / (0.1 + 1.0 + 0.1 + keep * t)
        assert r.predicted_speedup(keep) == pytest.approx(expected)
    assert r.break_even_keep == pytest.approx((t - 1.0 - 0.1) / t)
    assert r.predicted_speedup(r.break_even_keep) == pytest.approx(1.0)


def test_break_even_is_zero_when_scoring_costs_a_whole_step() -> None:
    r = _report(scoring_s=4.0)
    assert r.break_even_keep == 0.0
    assert r.predicted_speedup(0.0) < 1.0
    assert not r.recommended
    assert r.recommended_keep is None
    assert "Do not sift" in r.recommendation


def test_recommendation_names_a_starting_configuration() -> None:
    r = _report(scoring_s=0.2, selection_s=0.0, data_s=0.0)
    assert r.recommended
    keep = r.recommended_keep
    assert keep is not None and r.predicted_speedup(keep) >= 1.2
    beta = 1 / keep - 1
    assert f"RelativeProbabilistic(beta={beta:.3g})" in r.recommendation
    assert f"TopK(keep={keep:.3g})" in r.recommendation


def test_even_losses_add_a_caution() -> None:
    skewed = _report(scoring_s=0.2, selection_s=0.0, data_s=0.0, loss_concentration=0.9)
    even = dataclasses.replace(skewed, loss_concentration=0.55)
    assert skewed.recommended and even.recommended
    assert "Caution" not in skewed.recommendation
    assert "Caution" in even.recommendation and "55%" in even.recommendation
    assert "loss concentration" in str(even)


def test_loss_concentration() -> None:
    assert loss_concentration(np.ones(10)) == pytest.approx(0.5)
    assert loss_concentration(np.array([0.0, 0.0, 0.0, 2.0])) == pytest.approx(1.0)
    assert loss_concentration(np.array([1.0, 2.0, 3.0])) == pytest.approx(4.0 / 6.0)
    assert loss_concentration(np.array([np.nan, 1.0, 1.0])) == pytest.approx(0.5)
    assert math.isnan(loss_concentration(np.array([1.0])))
    assert math.isnan(loss_concentration(np.zeros(4)))


@pytest.mark.parametrize("keep", [-0.1, 1.5, float("nan"), "0.5", True])
def test_predicted_speedup_rejects_bad_keep(keep: Any) -> None:
    with pytest.raises(ValueError, match="keep"):
        _report().predicted_speedup(keep)


def test_report_prints_a_table() -> None:
    text = str(_report())
    for needle in ("scoring pass", "training backward", "optimizer step", "break-even keep"):
        assert needle in text
    assert text.count("x\n") >= 4  # one speedup row per kept fraction
    assert _report().as_dict()["recommended"] in (True, False)


# ------------------------------------------------------------------ how far training has got
def test_a_loss_still_falling_fast_is_too_early_to_judge() -> None:
    cheap = _report(scoring_s=0.2, selection_s=0.0, data_s=0.0, loss_concentration=0.9)
    fresh = dataclasses.replace(cheap, train_loss=1.7, loss_trend=-0.36, loss_trend_t=-9.0)
    assert cheap.recommended and not cheap.too_early
    assert fresh.too_early and not fresh.recommended
    assert fresh.recommended_keep == cheap.recommended_keep  # the cost verdict stands
    advice = fresh.recommendation
    assert advice.startswith("Too early to judge: the training loss fell by 36% across")
    assert "sift_delay" in advice and "ss.Auto" in advice and "profile again" in advice
    assert "training loss: 1.7, -36% across the pilot" in str(fresh)
    # A fall that is small, or not sure (a noisy pilot), is no reason to wait.
    assert not dataclasses.replace(fresh, loss_trend=-0.05).too_early
    assert not dataclasses.replace(fresh, loss_trend_t=-1.0).too_early


def test_a_loss_near_the_chance_level_is_too_early_to_judge() -> None:
    r = _report(scoring_s=0.2, selection_s=0.0, train_loss=2.2, chance_loss=math.log(10))
    assert r.too_early and not r.recommended
    assert "near the chance level (2.3 = log of the number of classes)" in r.recommendation
    assert not dataclasses.replace(r, train_loss=0.5).too_early
    # Where sifting does not pay on cost, that is said first: no need to wait and see.
    dear = dataclasses.replace(r, scoring_s=4.0)
    assert dear.recommendation.startswith("Do not sift")


def _mnist_like(n: int = 1024, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 16, generator=g) * 0.5 + F.one_hot(y, 16).float() * 3.0
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)


def test_profile_of_a_fresh_network_says_it_cannot_judge_yet() -> None:
    torch.manual_seed(0)
    model = _ExpensiveBackwardNet()  # a step costs many scoring passes: cheap on cost
    model.head = torch.nn.Linear(32, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fresh = ss.profile(model, _mnist_like(), _ce, opt, steps=12, warmup=2, num_classes=4)
    assert fresh.recommended_keep is not None, str(fresh)
    assert fresh.too_early and not fresh.recommended, str(fresh)
    assert fresh.recommendation.startswith("Too early to judge")
    assert fresh.chance_loss == pytest.approx(math.log(4)) and fresh.loss_trend < -0.1
    # Trained first, the same network is judged on its merits.
    loader = _mnist_like()
    for _ in range(3):
        for batch in loader:
            opt.zero_grad()
            _ce(model, batch).mean().backward()
            opt.step()
    trained = ss.profile(model, loader, _ce, opt, steps=12, warmup=2, num_classes=4)
    assert not trained.too_early, str(trained)
    assert trained.train_loss < 0.5 * math.log(4)


def test_num_classes_is_checked() -> None:
    model = torch.nn.Linear(16, 3)
    with pytest.raises(ValueError, match="num_classes"):
        ss.profile(model, _loader(), _ce, torch.optim.SGD(model.parameters()), 2, 0, num_classes=1)


# ------------------------------------------------------------------ the pilot run
def test_profile_figures_are_consistent() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    report = ss.profile(model, _loader(), _ce, opt, steps=5, warmup=2)
    assert report.steps == 5 and report.batch_size == 32 and report.device == "cpu"
    for name in ("data_s", "scoring_s", "selection_s", "forward_s", "backward_s", "optimizer_s"):
        value = getattr(report, name)
        assert math.isfinite(value) and value >= 0, name
    assert report.scoring_s > 0 and report.step_s > 0
    assert 0.5 <= report.loss_concentration <= 1.0
    assert report.predicted_speedup(1.0) < 1.0
    keeps = [i / 10 for i in range(11)]
    speedups = [report.predicted_speedup(k) for k in keeps]
    assert all(a > b for a, b in itertools.pairwise(speedups))
    k0 = report.break_even_keep
    assert 0.0 <= k0 < 1.0
    if k0 > 0:
        assert report.predicted_speedup(k0) == pytest.approx(1.0)
        assert report.predicted_speedup(max(0.0, k0 - 0.05)) > 1.0
    assert report.predicted_speedup(min(1.0, k0 + 0.05)) < 1.0
    assert isinstance(report.recommended, bool) and report.recommendation


def test_profile_restores_model_and_optimizer_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.Dropout(0.2),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 3),
    )
    model.register_buffer("scratch", torch.zeros(3), persistent=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = next(iter(_loader()))
    _ce(model, (x, y)).mean().backward()
    opt.step()  # the optimizer has state; the gradients are left in place
    model[2].eval()  # a mixed mode must come back as it was
    model.get_buffer("scratch").fill_(7.0)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = _clone_state(opt.state_dict())
    before_grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    before_modes = [m.training for m in model.modules()]
    before_rng = torch.get_rng_state()

    ss.profile(model, _loader(), _ce, opt, steps=3, warmup=1)

    after = model.state_dict()
    assert before_model.keys() == after.keys()
    for key, value in before_model.items():
        assert torch.equal(value, after[key]), key
    assert torch.equal(model.get_buffer("scratch"), torch.full((3,), 7.0))
    _assert_same_state(before_opt, opt.state_dict())
    for p, g in zip(model.parameters(), before_grads, strict=True):
        assert p.grad is not None and torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == before_modes
    assert torch.equal(torch.get_rng_state(), before_rng)


def test_profile_restores_state_when_the_pilot_fails() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.weight.detach().clone()
    calls = []

    def bad_step(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom")
        return _ce(m, batch).mean()

    with pytest.raises(RuntimeError, match="boom"):
        ss.profile(model, _loader(), _ce, opt, steps=5, warmup=1, train_step=bad_step)
    assert torch.equal(model.weight, before)
    assert opt.state_dict()["state"] == {}


def test_expensive_backward_is_recommended() -> None:
    torch.manual_seed(0)
    model = _ExpensiveBackwardNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = ss.profile(model, _loader(), _ce, opt, steps=5, warmup=1)
    assert report.backward_s > 3 * report.scoring_s
    assert report.recommended, str(report)
    assert "RelativeProbabilistic(beta=" in report.recommendation


def test_forward_dominated_model_is_not_recommended() -> None:
    torch.manual_seed(0)
    model = _frozen_extractor_net()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    report = ss.profile(model, _loader(n=512, batch_size=64), _ce, opt, steps=8, warmup=2)
    assert report.forward_s > report.backward_s
    assert not report.recommended, str(report)
    assert "Do not sift" in report.recommendation


def test_custom_train_step_is_used() -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[int] = []

    def step(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        seen.append(len(batch[0]))
        return _ce(m, batch).sum()

    report = ss.profile(model, _loader(), _ce, opt, steps=2, warmup=1, train_step=step)
    assert seen == [32, 32, 32] and report.steps == 2


def test_pilot_consumes_steps_plus_warmup_batches() -> None:
    pulled: list[int] = []

    class Counting:
        def __iter__(self) -> Any:
            for i, batch in enumerate(_loader()):
                pulled.append(i)
                yield batch

    model = torch.nn.Linear(16, 3)
    ss.profile(model, Counting(), _ce, torch.optim.SGD(model.parameters(), lr=0.1), 3, 2)
    assert pulled == [0, 1, 2, 3, 4]


def test_short_loader_warns_and_measures_what_it_has() -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="ran out"):
        report = ss.profile(model, _loader(n=96), _ce, opt, steps=10, warmup=1)
    assert report.steps == 2


def test_empty_loader_is_an_error() -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="at least one measured batch"):
        ss.profile(model, [], _ce, opt, steps=2, warmup=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.5}, ValueError, "steps"),
        ({"warmup": -1}, ValueError, "warmup"),
        ({"train_step": 3}, TypeError, "train_step"),
        ({"policy": "topk"}, TypeError, "policy"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        ss.profile(model, _loader(), _ce, opt, **kwargs)


def test_invalid_objects() -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model"):
        ss.profile(lambda x: x, _loader(), _ce, opt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optimizer"):
        ss.profile(model, _loader(), _ce, "adam")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn"):
        ss.profile(model, _loader(), None, opt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dataloader"):
        ss.profile(model, 3, _ce, opt)  # type: ignore[arg-type]


def test_train_step_must_return_a_scalar_with_grad() -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scalar tensor that requires grad"):
        ss.profile(model, _loader(), _ce, opt, steps=1, warmup=0, train_step=_ce)
    with pytest.raises(ValueError, match="scalar tensor that requires grad"):
        ss.profile(
            model, _loader(), _ce, opt, steps=1, warmup=0, train_step=lambda m, b: torch.ones(())
        )
    assert opt.state_dict()["state"] == {}


def test_loss_fn_errors_come_from_the_scoring_pass() -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def mean_loss(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        return _ce(m, batch).mean()

    with pytest.raises(ss.LossFunctionError, match="reduction='none'"):
        ss.profile(model, _loader(), mean_loss, opt, steps=1, warmup=0)


def _clone_state(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _clone_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone_state(v) for v in state]
    return state


def _assert_same_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_state(x, y)
    else:
        assert a == b


# ------------------------------------------------------------------ which mode
class _Stream(torch.utils.data.IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """A stream of samples: seen once each, no index to skip by."""

    def __iter__(self) -> Any:
        g = torch.Generator().manual_seed(0)
        for _ in range(256):
            yield torch.randn(16, generator=g), torch.randint(0, 3, (), generator=g)


def test_data_seen_once_with_a_dear_scoring_pass_trains_plain() -> None:
    advice = advise_mode(0.8, epochs=1, map_style=True, keep=0.3)
    assert advice.mode == "none"
    assert advice.scoring_speedup == pytest.approx(1 / 1.1)
    assert advice.reuse_speedup is None and advice.reuse_run_speedup is None
    assert advice.reason.startswith("Train plain: loss reuse cannot work because the run is a")
    assert "0.80 of a training step" in advice.reason and "0.91x" in advice.reason
    assert f"below the {MIN_SPEEDUP:g}x" in advice.reason


@pytest.mark.parametrize("epochs", [1, 2, 50])
@pytest.mark.parametrize("f_over_t", [0.0, 0.25, 0.9])
@pytest.mark.parametrize("keep", [0.1, 0.5, 1.0])
def test_an_iterable_dataset_never_gets_loss_reuse(
    epochs: int, f_over_t: float, keep: float
) -> None:
    advice = advise_mode(f_over_t, epochs=epochs, map_style=False, keep=keep)
    scoring = 1 / (f_over_t + keep)
    assert advice.mode == ("scoring" if scoring >= MIN_SPEEDUP else "none")
    assert advice.scoring_speedup == pytest.approx(scoring)
    assert advice.reuse_speedup is None and "iterable, not map-style" in advice.reason


def test_on_data_seen_once_the_scoring_pass_is_advised_from_min_speedup() -> None:
    edge = 1 / MIN_SPEEDUP - 0.25  # the keep at which 1 / (0.25 + keep) is MIN_SPEEDUP
    pays = advise_mode(0.25, epochs=1, map_style=True, keep=edge - 1e-6)
    short = advise_mode(0.25, epochs=1, map_style=True, keep=edge + 1e-6)
    assert pays.mode == "scoring" and short.mode == "none"
    assert pays.reason.startswith("Use the scoring pass (ss.SiftingDataLoader)")
    # Both reasons named when both hold.
    both = advise_mode(0.25, epochs=1, map_style=False, keep=0.3)
    assert "iterable, not map-style" in both.reason and "single epoch" in both.reason


def test_many_epochs_of_map_style_data_get_loss_reuse_with_its_figures() -> None:
    advice = advise_mode(0.25, epochs=12, map_style=True, keep=0.3, samples=16_000)
    assert advice.mode == "reuse" and (advice.epochs, advice.keep) == (12, 0.3)
    assert advice.reuse_speedup == pytest.approx(1 / 0.3)
    assert advice.reuse_run_speedup == pytest.approx(12 / (1 + 11 * 0.3))
    assert advice.scoring_speedup == pytest.approx(1 / 0.55)
    assert "hybrid mode" in advice.reason  # why it is not the advice
    for figure in ("seen 12 times", "3.33x faster", "2.79x over the 12 epochs", "only 1.82x"):
        assert figure in advice.reason
    # The first epoch trains all 16 000, the 11 after it 30 % of them.
    assert "about 68,800 of 192,000 sample-steps" in advice.reason
    assert "sample-steps" not in advise_mode(0.25, epochs=12, map_style=True, keep=0.3).reason


def test_two_epochs_are_enough_for_loss_reuse() -> None:
    advice = advise_mode(0.25, epochs=2, map_style=True, keep=0.5)
    assert advice.mode == "reuse"
    assert advice.reuse_run_speedup == pytest.approx(2 / 1.5)
    assert reuse_run_speedup(1, 0.5) == 1.0


def test_loss_reuse_at_a_keep_that_saves_too_little_trains_plain() -> None:
    edge = 1 / MIN_SPEEDUP  # the keep at which 1 / keep is MIN_SPEEDUP
    assert advise_mode(0.25, epochs=12, map_style=True, keep=edge - 1e-6).mode == "reuse"
    advice = advise_mode(0.25, epochs=12, map_style=True, keep=0.95)
    assert advice.mode == "none" and advice.reuse_speedup == pytest.approx(1 / 0.95)
    assert advice.reason.startswith("Train plain: keeping 95% saves too little")
    assert advise_mode(0.0, epochs=12, map_style=True, keep=1.0).mode == "none"


@pytest.mark.parametrize(
    ("f_over_t", "epochs", "map_style"), [(0.25, 12, True), (0.25, 1, True), (0.9, 1, False)]
)
def test_every_advice_says_what_sifting_costs(
    f_over_t: float, epochs: int, map_style: bool
) -> None:
    advice = advise_mode(f_over_t, epochs=epochs, map_style=map_style)
    assert advice.keep == ADVICE_KEEP and advice.caveat == SIFTING_CAVEAT
    assert str(advice) == f"{advice.reason} {SIFTING_CAVEAT}"
    assert "final accuracy for compute" in str(advice) and "fewer epochs" in str(advice)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"f_over_t": -0.1}, "`f_over_t` to be a non-negative float"),
        ({"f_over_t": math.inf}, "f_over_t"),
        ({"f_over_t": "0.2"}, "f_over_t"),
        ({"epochs": 0}, "`epochs` to be a positive int"),
        ({"epochs": 2.0}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"map_style": 1}, "`map_style` to be a bool"),
        ({"map_style": None}, "map_style"),
        ({"keep": 0.0}, r"`keep` to be a float in \(0, 1\]"),
        ({"keep": 1.5}, "keep"),
        ({"keep": math.nan}, "keep"),
        ({"samples": 0}, "`samples` to be a positive int or None"),
        ({"data_over_t": -1.0}, "data_over_t"),
    ],
)
def test_advise_mode_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"f_over_t": 0.25, "epochs": 3, "map_style": True, **kwargs}
    error = TypeError if "map_style" in kwargs else ValueError
    with pytest.raises(error, match=match):
        advise_mode(args.pop("f_over_t"), **args)


def test_report_advises_from_its_own_costs() -> None:
    r = _report(dataset_size=500, map_style=True)
    advice = r.advise_mode(epochs=6, keep=0.4)
    assert advice.mode == "reuse" and "about 1,500 of 3,000 sample-steps" in advice.reason
    # F/T and the data loading as the cost model counts them.
    assert advice.scoring_speedup == pytest.approx(r.predicted_speedup(0.4))
    assert r.advise_mode(epochs=6, map_style=False).mode == "scoring"  # 1.60x at keep 0.3
    assert r.advise_mode(epochs=6, keep=0.3, map_style=False).scoring_speedup == pytest.approx(
        r.predicted_speedup(0.3)
    )
    with pytest.raises(ValueError, match=r"`epochs`.*profile\(\.\.\., epochs=N\)"):
        r.advise_mode()
    with pytest.raises(ValueError, match=r"`map_style`.*no `dataset`"):
        _report().advise_mode(epochs=3)


def test_report_prints_the_mode_when_the_epochs_are_known() -> None:
    r = _report(dataset_size=500, map_style=True)
    assert "Which mode" not in str(r) and r.as_dict()["mode"] is None
    assert "report.advise_mode(epochs=N)" in _report(scoring_s=4.0).recommendation
    planned = dataclasses.replace(r, epochs=10, keep=0.5)
    assert "Which mode, over 10 epoch(s) at keep 0.50: reuse. Use loss reuse" in str(planned)
    assert str(planned).endswith(SIFTING_CAVEAT)
    assert planned.as_dict()["mode"] == "reuse"
    assert planned.as_dict()["mode_reason"] == str(planned.advise_mode())
    unknown = dataclasses.replace(planned, map_style=None)
    assert "unknown: the dataloader has no `dataset`" in str(unknown)
    assert (
        "report.advise_mode(epochs=N)"
        not in dataclasses.replace(r, scoring_s=4.0, epochs=3).recommendation
    )


def test_profile_reads_the_dataset_and_advises_a_mode() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = ss.profile(model, _loader(n=256), _ce, opt, steps=2, warmup=1, epochs=6)
    assert (report.dataset_size, report.map_style, report.epochs) == (256, True, 6)
    assert report.keep == ADVICE_KEEP
    advice = report.advise_mode()
    assert advice.mode == "reuse" and "about 640 of 1,536 sample-steps" in advice.reason
    assert advice.reuse_run_speedup == pytest.approx(6 / (1 + 5 * 0.3))
    assert advice.scoring_speedup == pytest.approx(report.predicted_speedup(0.3))
    assert "Which mode, over 6 epoch(s) at keep 0.30: reuse." in str(report)
    # A stream is seen once: never loss reuse, whatever the epochs.
    stream = DataLoader(_Stream(), batch_size=32)
    streamed = ss.profile(model, stream, _ce, opt, steps=2, warmup=1, epochs=6, keep=0.5)
    assert (streamed.dataset_size, streamed.map_style, streamed.keep) == (None, False, 0.5)
    advice = streamed.advise_mode()
    assert advice.mode == ("scoring" if streamed.predicted_speedup(0.5) >= MIN_SPEEDUP else "none")
    assert "iterable, not map-style" in advice.reason
    # Batches with no dataset behind them: the map-style question is left to the caller.
    batches = list(_loader(n=96))
    bare = ss.profile(model, batches, _ce, opt, steps=2, warmup=1, epochs=6)
    assert bare.map_style is None and bare.dataset_size is None
    assert bare.advise_mode(map_style=True).mode == "reuse"


@pytest.mark.parametrize(("kwargs", "match"), [({"epochs": 0}, "epochs"), ({"keep": 0}, "keep")])
def test_profile_checks_the_mode_arguments(kwargs: dict[str, Any], match: str) -> None:
    model = torch.nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=match):
        ss.profile(model, _loader(), _ce, opt, steps=1, warmup=0, **kwargs)


def test_a_reference_is_run_in_the_pilots_scoring_pass_and_its_scores_are_sifted() -> None:
    model = torch.nn.Linear(16, 3)
    reference_model = torch.nn.Linear(16, 3)
    calls: list[bool] = []

    def reference(batch: Any) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return _ce(reference_model, batch)

    report = ss.profile(
        model, _loader(), _ce, torch.optim.SGD(model.parameters(), lr=0.1), steps=4, warmup=1,
        reference=reference,
    )  # fmt: skip
    assert report.steps == 4
    assert calls == [False] * 5  # once per pilot batch, never with gradients
    ids = TensorDataset(torch.arange(64), torch.randn(64, 16), torch.randint(0, 3, (64,)))

    def by_id(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        return F.cross_entropy(m(batch[1]), batch[2], reduction="none")

    table = torch.rand(64)
    report = ss.profile(
        model, DataLoader(ids, batch_size=16), by_id, torch.optim.SGD(model.parameters(), 0.1),
        steps=2, warmup=1, reference=table, id_key=0,
    )  # fmt: skip
    assert report.steps == 2
    with pytest.raises(ValueError, match="id_key"):
        ss.profile(
            model, _loader(), _ce, torch.optim.SGD(model.parameters(), 0.1), steps=1,
            reference=table,
        )  # fmt: skip
