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
from smartsift.tools.profiling import ProfileReport, loss_concentration


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
    report = ss.profile(model, _loader(n=512, batch_size=64), _ce, opt, steps=5, warmup=1)
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
