"""The scoring pass leaves the model as it found it and checks the loss it gets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import smartsift as ss
from smartsift.modes.scoring import LossFunctionError, score, score_reference, unwrap_model


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(8, 3)
        self.modes_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        return self.head(self.drop(self.bn(self.lin(x))))


def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1], reduction="none")


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g) * 3 + 1, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("train_mode", [False, True])
def test_scoring_changes_no_parameter_buffer_or_mode(train_mode: bool) -> None:
    model = Net().train()
    model.bn.eval()  # a mixed mode must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = score(model, loss_fn, _batch(), 16, train_mode=train_mode)
    assert losses.shape == (16,) and losses.dtype == torch.float64 and not losses.requires_grad
    assert model.modes_seen == [train_mode]
    assert model.training and not model.bn.training and model.drop.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_scoring_would_move_batchnorm_stats_but_they_are_restored() -> None:
    model = Net().train()
    with torch.no_grad():
        model(_batch()[0])  # an ordinary train-mode forward does move them
    moved = model.bn.running_mean.clone()
    score(model, loss_fn, _batch(), 16, train_mode=True)
    assert torch.equal(model.bn.running_mean, moved)
    assert not torch.equal(moved, torch.zeros(8))


def test_mode_changed_inside_forward_is_restored() -> None:
    class Flipper(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.train()
            return super().forward(x)

    model = Flipper().eval()
    score(model, loss_fn, _batch(), 16)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    ("bad_loss", "match"),
    [
        (
            lambda m, b: loss_fn(m, b).mean(),
            r"shape \(16,\).*returned shape \(\).*reduction='none'",
        ),
        (lambda m, b: loss_fn(m, b)[:5], r"returned shape \(5,\)"),
        (lambda m, b: m(b[0]), r"returned shape \(16, 3\).*Reduce every dimension"),
        (lambda m, b: 3.0, "returned float"),
    ],
)
def test_wrong_loss_shapes_are_explained(bad_loss, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LossFunctionError, match=match):
        score(Net(), bad_loss, _batch(), 16)
    assert issubclass(LossFunctionError, ValueError)


def test_loss_with_grad_and_lower_precision_losses_are_detached_and_cast() -> None:
    def grad_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            return loss_fn(model, batch)

    model = Net()
    losses = score(model, grad_loss, _batch(), 16)
    assert not losses.requires_grad
    half = score(model, lambda m, b: loss_fn(m, b).to(torch.bfloat16), _batch(), 16)
    assert half.dtype == torch.float64
    assert torch.allclose(half, losses, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_losses_are_refused_naming_the_dtype_and_the_fix(
    dtype: torch.dtype,
) -> None:
    def label_as_loss(
        model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return batch[1].to(dtype)  # a label returned where a loss was meant

    with pytest.raises(LossFunctionError, match="floating-point") as info:
        score(Net(), label_as_loss, _batch(), 16)
    message = str(info.value)
    assert str(dtype) in message
    assert "reduction='none'" in message and ".float()" in message


def test_an_integer_loss_is_refused_by_the_loader_at_its_first_scored_batch() -> None:
    data = torch.utils.data.TensorDataset(*_batch(32))
    loader = ss.SiftingDataLoader(
        torch.utils.data.DataLoader(data, batch_size=8),
        Net(),
        lambda m, b: m(b[0]).argmax(1),  # a prediction, not a loss
        policy=ss.TopK(keep=0.5),
    )
    with pytest.raises(LossFunctionError, match=r"dtype torch\.int64"):
        next(iter(loader))
    assert loader.stats.samples_kept == 0


def test_unwrap_looks_through_wrappers() -> None:
    inner = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.nn.DataParallel(inner)) is inner
    assert unwrap_model(inner) is inner


def test_autocast_scoring_runs_in_lower_precision() -> None:
    dtypes: list[torch.dtype] = []

    def probe(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        out = model.lin(batch[0])
        dtypes.append(out.dtype)
        return out.float().sum(1)

    losses = score(Net(), probe, _batch(), 16, autocast_dtype=torch.bfloat16)
    assert dtypes == [torch.bfloat16] and losses.dtype == torch.float64


# ----------------------------------------------------------------------------- a reference's pass
def test_the_reference_runs_under_no_grad_on_the_batch_and_leaves_the_model_alone() -> None:
    small = Net().eval()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    grad_enabled: list[bool] = []
    batch = _batch()

    def reference(b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        assert b is batch
        grad_enabled.append(torch.is_grad_enabled())
        return loss_fn(small, b)

    out = score_reference(reference, batch, 16)
    assert grad_enabled == [False]
    assert out.dtype == torch.float64 and out.device.type == "cpu" and not out.requires_grad
    assert torch.allclose(out, loss_fn(small, batch).detach().double())
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    assert small.modes_seen == [False, False]  # the user's model, in the user's mode


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda b: loss_fn(Net(), b).mean(), r"reference must return .*shape \(16,\).*\(\)"),
        (lambda b: loss_fn(Net(), b)[:4], r"reference must return .*returned shape \(4,\)"),
        (lambda b: b[1], r"reference must return floating-point losses.*torch\.int64"),
        (lambda b: [0.0] * 16, r"reference must return a tensor .* returned list"),
    ],
)
def test_a_wrong_reference_output_is_explained_naming_the_reference(bad, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LossFunctionError, match=match):
        score_reference(bad, _batch(), 16)


def test_the_reference_runs_under_the_scoring_pass_autocast() -> None:
    dtypes: list[torch.dtype] = []
    small = Net().eval()

    def reference(b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        out = small.lin(b[0])
        dtypes.append(out.dtype)
        return out.float().sum(1)

    score_reference(reference, _batch(), 16, autocast_dtype=torch.bfloat16)
    assert dtypes == [torch.bfloat16]
