"""The reference system's API (``smartsift.compat.sagemaker``): configs, mapping, errors, batches,
a script in the reference's documented style end to end, and the example script."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _resume import assert_resume_matches
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.compat import sagemaker as sm

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_TIMEOUT_S = 180  # a hang fails the test instead of blocking the suite


class CELoss(sm.Loss):
    """Per-sample cross-entropy of an ``(x, y)`` batch, in the reference's style."""

    def __init__(self) -> None:
        self.celoss = torch.nn.CrossEntropyLoss(reduction="none")

    def loss(self, model: Any, transformed_batch: Any, original_batch: Any = None) -> Any:
        x, y = original_batch
        return self.celoss(model(x), y)


def make_config(beta: float = 1.0, history: int = 100, delay: int = 0, repeat: bool = False):
    return sm.RelativeProbabilisticSiftConfig(
        beta_value=beta,
        loss_history_length=history,
        loss_based_sift_config=sm.LossConfig(
            sift_config=sm.SiftingBaseConfig(sift_delay=delay, repeat_delay_per_epoch=repeat)
        ),
    )


def toy_loader(n: int = 64, batch_size: int = 16) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch_size)


def make_loader(config: Any = None, **kwargs: Any) -> sm.SiftingDataloader:
    kwargs.setdefault("model", torch.nn.Linear(4, 2))
    kwargs.setdefault("loss_impl", CELoss())
    return sm.SiftingDataloader(
        sift_config=make_config() if config is None else config,
        orig_dataloader=kwargs.pop("orig_dataloader", toy_loader()),
        **kwargs,
    )


# --------------------------------------------------------------------------- configs
def test_documented_defaults() -> None:
    base = sm.SiftingBaseConfig()
    assert (base.sift_delay, base.repeat_delay_per_epoch) == (1000, False)
    assert sm.LossConfig().sift_config == base
    config = sm.RelativeProbabilisticSiftConfig(beta_value=0.5, loss_history_length=500)
    assert config.loss_based_sift_config.sift_config.sift_delay == 1000


def test_config_values_reach_the_smartsift_loader() -> None:
    loader = make_loader(make_config(beta=2, history=123, delay=7, repeat=True))
    inner = loader.sifting_loader
    assert isinstance(inner, ss.SiftingDataLoader)
    assert inner.policy == ss.RelativeProbabilistic(beta=2.0, history=123)
    assert inner.sift_delay == 7
    assert inner.repeat_delay_per_epoch is True
    assert inner.log_interval is None


def test_dict_configs_map_like_config_objects() -> None:
    as_dict = {
        "beta_value": 3,
        "loss_history_length": 50,
        "loss_based_sift_config": {"sift_config": {"sift_delay": 4}},
    }
    inner = make_loader(as_dict).sifting_loader
    assert inner.policy == ss.RelativeProbabilistic(beta=3.0, history=50)
    assert (inner.sift_delay, inner.repeat_delay_per_epoch) == (4, False)
    nested = sm.RelativeProbabilisticSiftConfig(1, 10, {"sift_config": {"sift_delay": 2}})
    assert nested.loss_based_sift_config == sm.LossConfig(sm.SiftingBaseConfig(sift_delay=2))


def test_threshold_config_maps_to_quantile_threshold() -> None:
    config = sm.ThresholdSiftConfig(exclude_proportion=0.25, loss_history_length=200)
    inner = make_loader(config).sifting_loader
    assert inner.policy == ss.QuantileThreshold(exclude=0.25, history=200)
    assert inner.sift_delay == 1000
    from_dict = make_loader({"exclude_proportion": 0.5, "loss_history_length": 20})
    assert from_dict.sifting_loader.policy == ss.QuantileThreshold(exclude=0.5, history=20)


@pytest.mark.parametrize(
    ("build", "name", "value"),
    [
        (lambda: sm.RelativeProbabilisticSiftConfig(0, 10), "beta_value", "0"),
        (lambda: sm.RelativeProbabilisticSiftConfig(-1.5, 10), "beta_value", "-1.5"),
        (lambda: sm.RelativeProbabilisticSiftConfig(math.nan, 10), "beta_value", "nan"),
        (lambda: sm.RelativeProbabilisticSiftConfig("1", 10), "beta_value", "'1'"),
        (lambda: sm.RelativeProbabilisticSiftConfig(True, 10), "beta_value", "True"),
        (lambda: sm.RelativeProbabilisticSiftConfig(1, 0), "loss_history_length", "0"),
        (lambda: sm.RelativeProbabilisticSiftConfig(1, 2.5), "loss_history_length", "2.5"),
        (lambda: sm.RelativeProbabilisticSiftConfig(1, 10, 5), "loss_based_sift_config", "5"),
        (lambda: sm.SiftingBaseConfig(sift_delay=-1), "sift_delay", "-1"),
        (lambda: sm.SiftingBaseConfig(sift_delay=1.0), "sift_delay", "1.0"),
        (
            lambda: sm.SiftingBaseConfig(repeat_delay_per_epoch="yes"),
            "repeat_delay_per_epoch",
            "'yes'",
        ),
        (lambda: sm.LossConfig(sift_config={"sift_dealy": 5}), "sift_config", "sift_dealy"),
        (lambda: sm.ThresholdSiftConfig(1.0, 10), "exclude_proportion", "1.0"),
        (lambda: make_loader({"beta_value": 1.0}), "sift_config", "loss_history_length"),
        (lambda: make_loader(ss.TopK(keep=0.5)), "sift_config", "TopK"),
        (lambda: make_loader(orig_dataloader=iter(toy_loader())), "orig_dataloader", "iter"),
        (lambda: make_loader(model=None), "model", "NoneType"),
        (lambda: make_loader(log_batch_data=1), "log_batch_data", "1"),
        (lambda: make_loader(seed="0"), "seed", "'0'"),
    ],
)
def test_invalid_settings_raise_early_naming_argument_and_value(
    build: Any, name: str, value: str
) -> None:
    with pytest.raises(sm.SiftConfigValidationException) as info:
        build()
    message = str(info.value)
    assert f"`{name}`" in message
    assert value in message
    # Both smartsift's error types for bad settings catch it.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError)


def test_a_config_changed_after_it_was_built_is_checked_again() -> None:
    config = make_config()
    config.beta_value = -1
    with pytest.raises(sm.SiftConfigValidationException, match="beta_value"):
        make_loader(config)


def test_keyword_arguments_pass_through_and_reserved_ones_are_refused() -> None:
    inner = make_loader(seed=3, drop_last=True, batch_size=8).sifting_loader
    assert inner.drop_last is True
    assert inner.batch_size == 8
    with pytest.raises(sm.SiftConfigValidationException, match="sift_config"):
        make_loader(policy=ss.TopK(keep=0.5))
    with pytest.raises(sm.SiftConfigValidationException, match="bogus"):
        make_loader(bogus=1)


# --------------------------------------------------------------------------- exceptions
def test_exceptions_are_smartsifts_own_so_either_except_style_works() -> None:
    assert issubclass(sm.SiftConfigValidationException, ValueError)
    assert issubclass(sm.SiftConfigValidationException, TypeError)
    assert issubclass(sm.UnsupportedDataFormatException, ss.UnsupportedBatchError)
    assert issubclass(sm.LossImplementationNotProvidedException, ss.LossFunctionError)
    assert issubclass(sm.LossImplementationNotProvidedException, TypeError)


class NoLoss(sm.Loss):
    pass


class ShadowedLoss(sm.Loss):
    def __init__(self) -> None:
        self.loss = torch.nn.CrossEntropyLoss(reduction="none")  # hides the method


@pytest.mark.parametrize(
    ("loss_impl", "says"),
    [
        (None, "got None"),
        (NoLoss(), "NoLoss inherits the abstract one"),
        (ShadowedLoss(), "CrossEntropyLoss, which hides the method"),
        (object(), "Subclass smartsift.compat.sagemaker.Loss"),
    ],
)
def test_a_missing_or_unusable_loss_raises_early(loss_impl: Any, says: str) -> None:
    with pytest.raises(sm.LossImplementationNotProvidedException, match=says):
        make_loader(loss_impl=loss_impl)


def test_a_duck_typed_loss_is_accepted() -> None:
    class DuckLoss:  # the reference's docs show a Loss that does not subclass Loss
        def loss(self, model: Any, transformed_batch: Any, original_batch: Any = None) -> Any:
            return F.cross_entropy(model(original_batch[0]), original_batch[1], reduction="none")

    assert sum(len(x) for x, _ in make_loader(loss_impl=DuckLoss(), seed=0)) > 0


def test_a_loss_of_the_wrong_shape_raises_the_reference_error_while_iterating() -> None:
    class MeanLoss(sm.Loss):
        def loss(self, model: Any, transformed_batch: Any, original_batch: Any = None) -> Any:
            return F.cross_entropy(model(original_batch[0]), original_batch[1])  # a scalar

    loader = make_loader(loss_impl=MeanLoss())
    with pytest.raises(sm.LossImplementationNotProvidedException, match="reduction='none'"):
        next(iter(loader))
    with pytest.raises(ss.LossFunctionError):  # smartsift's style catches it too
        next(iter(loader))


class Opaque:
    """A batch type smartsift cannot slice."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


def opaque_loader(n: int = 64, batch_size: int = 16) -> DataLoader[Any]:
    base = toy_loader(n, batch_size)
    return DataLoader(
        base.dataset,
        batch_size=batch_size,
        collate_fn=lambda s: Opaque(torch.stack([a for a, _ in s]), torch.stack([b for _, b in s])),
    )


class OpaqueLoss(sm.Loss):
    def loss(self, model: Any, transformed_batch: Any, original_batch: Any = None) -> Any:
        return F.cross_entropy(model(original_batch.x), original_batch.y, reduction="none")


def test_an_unsupported_batch_raises_the_reference_error_while_iterating() -> None:
    loader = make_loader(orig_dataloader=opaque_loader(), loss_impl=OpaqueLoss())
    with pytest.raises(sm.UnsupportedDataFormatException, match="batch_transforms") as info:
        next(iter(loader))
    assert isinstance(info.value, ss.UnsupportedBatchError)


def test_a_transform_missing_a_method_is_refused() -> None:
    class Half(sm.SiftingBatchTransform):
        def transform(self, batch: Any) -> Any:
            return sm.TensorBatch(batch.x, batch.y)

    with pytest.raises(sm.SiftConfigValidationException, match="reverse_transform"):
        make_loader(batch_transforms=Half())


# --------------------------------------------------------------------------- batches
class OpaqueToTensorBatch(sm.SiftingBatchTransform):
    def __init__(self) -> None:
        self.calls = 0

    def transform(self, batch: Opaque) -> sm.TensorBatch:
        self.calls += 1
        return sm.TensorBatch(batch.x, batch.y)

    def reverse_transform(self, tensor_batch: sm.TensorBatch) -> Opaque:
        return Opaque(tensor_batch.inputs, tensor_batch.labels)


def test_tensor_batch_transform_yields_the_users_type_and_transforms_once() -> None:
    seen: list[Any] = []

    class RecordingLoss(sm.Loss):
        def loss(self, model: Any, transformed_batch: Any, original_batch: Any = None) -> Any:
            seen.append((transformed_batch, original_batch))
            return F.cross_entropy(
                model(transformed_batch.inputs), transformed_batch.labels, reduction="none"
            )

    transform = OpaqueToTensorBatch()
    loader = make_loader(
        orig_dataloader=opaque_loader(n=96),
        batch_transforms=transform,
        loss_impl=RecordingLoss(),
        seed=0,
    )
    batches = list(loader)
    assert all(isinstance(b, Opaque) for b in batches)
    assert sum(len(b.y) for b in batches) == loader.stats.samples_trained
    assert loader.stats.samples_sifted > 0
    assert transform.calls == 6  # once per raw batch: the loss got the same TensorBatch
    assert all(isinstance(t, sm.TensorBatch) and isinstance(o, Opaque) for t, o in seen)
    assert all(t.inputs is o.x for t, o in seen)


class Record:
    """A batch of ids with a per-sample tensor, a ragged list and a string per sample."""

    def __init__(self, ids: list[int], vectors: list[torch.Tensor], lists: list[list[int]]):
        self.ids, self.vectors, self.lists = ids, vectors, lists


class RecordToListBatch(sm.SiftingBatchTransform):
    def transform(self, batch: Record) -> sm.ListBatch:
        inputs = list(zip(batch.vectors, batch.lists, strict=True))
        return sm.ListBatch(inputs, batch.ids)

    def reverse_transform(self, list_batch: sm.ListBatch) -> Record:
        vectors = [v for v, _ in list_batch.inputs]
        lists = [ragged for _, ragged in list_batch.inputs]
        return Record(list(list_batch.labels or []), vectors, lists)


class IdLoss(sm.Loss):
    """The sample id as its loss: deterministic, so the high ids are kept."""

    def loss(self, model: Any, transformed_batch: Any, original_batch: Any = None) -> Any:
        return torch.tensor(transformed_batch.labels, dtype=torch.float32)


def test_list_batches_keep_every_samples_items_together() -> None:
    ids = list(range(60))
    records = [
        Record(
            ids[i : i + 12],
            [torch.full((3,), float(k)) for k in ids[i : i + 12]],
            [[k] * (k % 4 + 1) for k in ids[i : i + 12]],
        )
        for i in range(0, 60, 12)
    ]
    loader = make_loader(
        config=sm.ThresholdSiftConfig(0.5, 1000, {"sift_config": {"sift_delay": 0}}),
        orig_dataloader=records,
        batch_transforms=RecordToListBatch(),
        loss_impl=IdLoss(),
    )
    out = list(loader)
    assert all(isinstance(r, Record) for r in out)
    kept = [k for r in out for k in r.ids]
    assert 0 < len(kept) < 60
    for r in out:
        for k, vector, ragged in zip(r.ids, r.vectors, r.lists, strict=True):
            assert vector.tolist() == [float(k)] * 3
            assert ragged == [k] * (k % 4 + 1)


def test_list_batch_of_plain_values_round_trips() -> None:
    batch = sm.ListBatch(["a", "b", "c"])
    data = batch.to_sliceable()
    assert data["inputs"] == ["a", "b", "c"] and data["labels"] is None
    assert sm.ListBatch.from_sliceable(data).inputs == ["a", "b", "c"]
    with pytest.raises(sm.UnsupportedDataFormatException, match="one label per input"):
        sm.ListBatch([1, 2], [0])


def test_tensor_batch_loader_resumes_exactly_from_a_checkpoint() -> None:
    class ToTensorBatch(sm.SiftingBatchTransform):
        def transform(self, batch: Any) -> sm.TensorBatch:
            return sm.TensorBatch(batch[0], batch[1])

        def reverse_transform(self, tensor_batch: sm.TensorBatch) -> list[torch.Tensor]:
            return [tensor_batch.inputs, tensor_batch.labels]

    def make() -> ss.SiftingDataLoader:
        torch.manual_seed(0)
        return make_loader(
            config=make_config(delay=1),
            orig_dataloader=toy_loader(n=80),
            model=torch.nn.Linear(4, 2),
            batch_transforms=ToTensorBatch(),
            seed=0,
        ).sifting_loader

    assert_resume_matches(make, [0, 1, 2, 4])


def test_log_batch_data_logs_stats_after_every_raw_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loader = make_loader(log_batch_data=True, seed=0)
    assert loader.sifting_loader.log_interval == 1
    with caplog.at_level(logging.INFO, logger="smartsift"):
        list(loader)
    records = [r for r in caplog.records if r.name == "smartsift"]
    assert len(records) >= loader.stats.raw_batches == 4
    assert "seen=" in records[-1].getMessage()


def test_the_loader_forwards_smartsifts_surface() -> None:
    loader = make_loader(make_config(delay=100), seed=0)  # nothing sifted: len is exact
    assert len(loader) == 4 == len(list(loader))
    assert loader.batch_size == 16
    assert loader.dataset is loader.orig_dataloader.dataset
    assert loader.stats.samples_seen == 64
    state = loader.state_dict()
    loader.load_state_dict(state)
    loader.set_epoch(1)


# --------------------------------------------------------------------------- end to end
REFERENCE_STYLE_SCRIPT = """
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

# The reference's imports, with the module name changed:
# from smart_sifting.data_model.data_model_interface import SiftingBatch, SiftingBatchTransform
# from smart_sifting.data_model.tensor_batch import TensorBatch
# from smart_sifting.dataloader.sift_dataloader import SiftingDataloader
# from smart_sifting.loss.abstract_sift_loss_module import Loss
# from smart_sifting.sift_config.sift_configs import (
#     RelativeProbabilisticSiftConfig, LossConfig, SiftingBaseConfig)
from smartsift.compat.sagemaker import SiftingBatch, SiftingBatchTransform
from smartsift.compat.sagemaker import TensorBatch
from smartsift.compat.sagemaker import SiftingDataloader
from smartsift.compat.sagemaker import Loss
from smartsift.compat.sagemaker import (
    RelativeProbabilisticSiftConfig,
    LossConfig,
    SiftingBaseConfig,
)


class FeatureBatch:
    def __init__(self, features, labels):
        self.features = features
        self.labels = labels


def collate_fn(samples):
    return FeatureBatch(torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]))


class FeatureBatchTransform(SiftingBatchTransform):
    def transform(self, batch: Any):
        return TensorBatch(batch.features, batch.labels)

    def reverse_transform(self, tensor_batch: TensorBatch):
        return FeatureBatch(tensor_batch.inputs, tensor_batch.labels)


class SiftingImplementedLoss(Loss):
    def __init__(self):
        self.loss_no_reduction = torch.nn.CrossEntropyLoss(reduction="none")

    def loss(
        self,
        model: torch.nn.Module,
        transformed_batch: SiftingBatch,
        original_batch: Any = None,
    ) -> torch.Tensor:
        device = next(model.parameters()).device
        outputs = model(original_batch.features.to(device))
        return self.loss_no_reduction(outputs, original_batch.labels.to(device))


torch.manual_seed(0)
x = torch.randn(320, 8)
y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)

sift_config = RelativeProbabilisticSiftConfig(
    beta_value=1,
    loss_history_length=200,
    loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=5)),
)
train_dataloader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                              collate_fn=collate_fn)
train_dataloader = SiftingDataloader(
    sift_config=sift_config,
    orig_dataloader=train_dataloader,
    batch_transforms=FeatureBatchTransform(),
    loss_impl=SiftingImplementedLoss(),
    model=model,
    log_batch_data=False,
)

criterion = torch.nn.CrossEntropyLoss()
batch_types = set()
trained = 0
for epoch in range(3):
    model.train()
    for batch in train_dataloader:
        batch_types.add(type(batch).__name__)
        trained += len(batch.labels)
        loss = criterion(model(batch.features), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

with torch.no_grad():
    accuracy = (model(x).argmax(1) == y).float().mean().item()
"""


def test_a_script_in_the_reference_style_runs_end_to_end() -> None:
    namespace: dict[str, Any] = {"__name__": "reference_style_script"}
    exec(compile(REFERENCE_STYLE_SCRIPT, "reference_style_script.py", "exec"), namespace)
    stats = namespace["train_dataloader"].stats
    assert namespace["batch_types"] == {"FeatureBatch"}
    assert stats.samples_seen == 3 * 320
    assert namespace["trained"] == stats.samples_trained
    assert namespace["trained"] < stats.samples_seen  # samples were sifted out
    assert stats.samples_sifted > 0
    assert namespace["accuracy"] > 0.85  # and the model learned


def test_the_example_script_runs_when_copied_out_of_the_repository(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")
    script = shutil.copy(ROOT / "examples" / "sagemaker_compat.py", tmp_path)
    args = ["--samples", "400", "--epochs", "2", "--sift-delay", "2", "--width", "8"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        result = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT_S,
            env=env,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the example ran past {EXAMPLE_TIMEOUT_S} s: {err.stdout!r} {err.stderr!r}")
    assert result.returncode == 0, result.stdout + result.stderr
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 0", "epoch 1"]
    (summary,) = [line for line in result.stdout.splitlines() if line.startswith("seen=")]
    counts = dict(item.split("=") for item in summary.split())
    assert int(counts["seen"]) == 2 * 320
    assert 0 < int(counts["trained"]) < int(counts["seen"])
    assert float(counts["lr"]) == 0.0  # the cosine, following the data, ended with training


def test_a_script_that_seeds_torch_sifts_the_same_way_every_run() -> None:
    runs = []
    for _ in range(2):
        namespace: dict[str, Any] = {"__name__": "reference_style_script"}
        exec(compile(REFERENCE_STYLE_SCRIPT, "reference_style_script.py", "exec"), namespace)
        stats = namespace["train_dataloader"].stats
        runs.append((stats.samples_kept, stats.samples_sifted, namespace["accuracy"]))
    assert runs[0] == runs[1]
