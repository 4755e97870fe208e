"""Tests of ``smartsift.integrations.hf_losses`` on plain torch stand-ins for the HF heads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from smartsift.integrations.hf_losses import (
    IGNORE_INDEX,
    causal_lm_loss,
    loss_for_model,
    masked_lm_loss,
    sequence_classification_loss,
    token_classification_loss,
    token_mean_cross_entropy,
)


class _Fixed(torch.nn.Module):
    """Returns fixed logits whatever its inputs; records the inputs it was called with."""

    def __init__(self, logits: torch.Tensor, config: Any = None, as_: str = "dict") -> None:
        super().__init__()
        self.logits = logits
        self.config = config
        self.as_ = as_
        self.calls: list[dict[str, Any]] = []

    def forward(self, **inputs: Any) -> Any:
        self.calls.append(inputs)
        if self.as_ == "tuple":
            return (self.logits,)
        if self.as_ == "attr":
            return SimpleNamespace(logits=self.logits, loss=None)
        return {"logits": self.logits}


def _logits(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- sequence classification
@pytest.mark.parametrize("as_", ["dict", "tuple", "attr"])
def test_single_label_classification_is_per_sample_cross_entropy(as_: str) -> None:
    logits = _logits(4, 3)
    labels = torch.tensor([0, 2, 1, 2])
    model = _Fixed(logits, as_=as_)
    out = sequence_classification_loss(model, {"input_ids": torch.zeros(4, 2), "labels": labels})
    assert torch.allclose(out, F.cross_entropy(logits, labels, reduction="none"))
    assert torch.allclose(out.mean(), F.cross_entropy(logits, labels))  # the model's own loss
    assert "labels" not in model.calls[0]  # the model computes no loss of its own


def test_an_ignored_label_scores_zero() -> None:
    out = sequence_classification_loss(
        _Fixed(_logits(2, 3)), {"x": torch.zeros(2), "labels": torch.tensor([1, IGNORE_INDEX])}
    )
    assert out[1] == 0.0 and out[0] > 0.0


def test_one_label_is_regression_by_squared_error() -> None:
    logits = torch.tensor([[1.0], [3.0], [-1.0]])
    out = sequence_classification_loss(_Fixed(logits), {"labels": torch.tensor([1.0, 1.0, 1.0])})
    assert out.tolist() == [0.0, 4.0, 4.0]


def test_regression_over_several_outputs_averages_them_per_sample() -> None:
    config = SimpleNamespace(num_labels=2, problem_type="regression")
    logits = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    out = sequence_classification_loss(_Fixed(logits, config), {"labels": labels})
    assert out.tolist() == [(0.0 + 4.0) / 2, (4.0 + 4.0) / 2]


def test_float_labels_over_several_classes_are_multi_label_binary_cross_entropy() -> None:
    logits = _logits(3, 4)
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    out = sequence_classification_loss(_Fixed(logits), {"labels": labels})
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
    assert torch.allclose(out, bce)
    assert torch.allclose(out.mean(), F.binary_cross_entropy_with_logits(logits, labels))


def test_the_configs_problem_type_wins_over_the_inferred_one() -> None:
    # Integer labels would infer single-label classification; the config says multi-label.
    config = SimpleNamespace(num_labels=2, problem_type="multi_label_classification")
    logits = _logits(2, 2)
    labels = torch.tensor([[1, 0], [1, 1]])
    out = sequence_classification_loss(_Fixed(logits, config), {"labels": labels})
    expected = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    assert torch.allclose(out, expected.mean(1))


def test_an_unknown_problem_type_is_refused() -> None:
    config = SimpleNamespace(num_labels=2, problem_type="ranking")
    with pytest.raises(ValueError, match=r"problem_type.*but got 'ranking'; pass your own loss_fn"):
        sequence_classification_loss(
            _Fixed(_logits(2, 2), config), {"labels": torch.tensor([0, 1])}
        )


def test_a_batch_that_is_no_mapping_or_lacks_labels_is_refused() -> None:
    model = _Fixed(_logits(2, 2))
    with pytest.raises(TypeError, match=r"to be a mapping of model inputs.*but got tuple"):
        sequence_classification_loss(model, (torch.zeros(2), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=r"to hold `labels`.*holds \['input_ids'\]"):
        sequence_classification_loss(model, {"input_ids": torch.zeros(2)})


def test_a_model_that_returns_no_logits_is_refused() -> None:
    class NoLogits(torch.nn.Module):
        def forward(self, **inputs: Any) -> Any:
            return {"hidden": torch.zeros(2, 2)}

    with pytest.raises(TypeError, match="Expected the model to return logits"):
        sequence_classification_loss(NoLogits(), {"labels": torch.tensor([0, 1])})


# ---------------------------------------------------------------- token-level heads
def test_token_mean_cross_entropy_averages_each_sequence_over_its_labelled_tokens() -> None:
    logits = _logits(3, 4, 5)
    labels = torch.tensor([[0, 1, 2, 3], [4, IGNORE_INDEX, 1, IGNORE_INDEX], [IGNORE_INDEX] * 4])
    out = token_mean_cross_entropy(logits, labels)
    per_token = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    assert torch.allclose(out[0], per_token[0].mean())
    assert torch.allclose(out[1], (per_token[1, 0] + per_token[1, 2]) / 2)
    assert out[2] == 0.0
    # Weighted by their token counts, the per-sequence losses give the model's token mean.
    counts = (labels != IGNORE_INDEX).sum(1)
    assert torch.allclose(
        (out * counts).sum() / counts.sum(),
        F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), ignore_index=IGNORE_INDEX),
    )


def test_token_mean_cross_entropy_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"got logits \(2, 3\) and labels \(2, 3\)"):
        token_mean_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got logits \(2, 3, 4\) and labels \(2, 2\)"):
        token_mean_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("loss_fn", [token_classification_loss, masked_lm_loss])
def test_token_classification_and_masked_lm_score_the_labelled_positions(loss_fn: Any) -> None:
    logits = _logits(2, 3, 6)
    labels = torch.tensor([[IGNORE_INDEX, 5, IGNORE_INDEX], [0, 1, 2]])
    out = loss_fn(_Fixed(logits), {"input_ids": torch.zeros(2, 3), "labels": labels})
    assert torch.allclose(out, token_mean_cross_entropy(logits, labels))
    assert torch.allclose(out[0], F.cross_entropy(logits[0, 1:2], labels[0, 1:2]))


def test_causal_lm_scores_each_position_against_the_next_token() -> None:
    logits = _logits(1, 4, 7)
    labels = torch.tensor([[3, 1, 4, 1]])
    out = causal_lm_loss(_Fixed(logits), {"input_ids": labels, "labels": labels})
    # Positions 0..2 predict tokens 1..3; the last position predicts nothing.
    expected = F.cross_entropy(logits[0, :3], labels[0, 1:])
    assert torch.allclose(out, expected.unsqueeze(0))


def test_causal_lm_without_labels_learns_the_unpadded_input_ids() -> None:
    logits = _logits(2, 4, 7)
    input_ids = torch.tensor([[3, 1, 4, 1], [5, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    model = _Fixed(logits)
    out = causal_lm_loss(model, {"input_ids": input_ids, "attention_mask": mask})
    labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
    with_labels = causal_lm_loss(
        model, {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    )
    assert torch.allclose(out, with_labels)
    assert torch.allclose(out[1], F.cross_entropy(logits[1, :1], input_ids[1, 1:2]))
    assert "labels" not in model.calls[1]


def test_causal_lm_turns_the_cache_off_when_the_model_has_one() -> None:
    cached = _Fixed(_logits(1, 2, 3), SimpleNamespace(use_cache=True))
    causal_lm_loss(cached, {"input_ids": torch.tensor([[1, 2]])})
    assert cached.calls[0]["use_cache"] is False
    plain = _Fixed(_logits(1, 2, 3))
    causal_lm_loss(plain, {"input_ids": torch.tensor([[1, 2]])})
    assert "use_cache" not in plain.calls[0]


def test_causal_lm_needs_labels_or_input_ids_in_a_mapping() -> None:
    model = _Fixed(_logits(1, 2, 3))
    with pytest.raises(ValueError, match=r"`labels` or `input_ids`.*holds \['inputs_embeds'\]"):
        causal_lm_loss(model, {"inputs_embeds": torch.zeros(1, 2, 4)})
    with pytest.raises(TypeError, match="passed to causal_lm_loss to be a mapping"):
        causal_lm_loss(model, [torch.tensor([[1, 2]])])


# ---------------------------------------------------------------- choosing the loss
def _named(name: str, **attrs: Any) -> torch.nn.Module:
    module = type(name, (torch.nn.Module,), {})()
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


@pytest.mark.parametrize(
    ("name", "loss_fn"),
    [
        ("TinyForSequenceClassification", sequence_classification_loss),
        ("TinyForTokenClassification", token_classification_loss),
        ("TinyForMaskedLM", masked_lm_loss),
        ("TinyForCausalLM", causal_lm_loss),
        ("TinyLMHeadModel", causal_lm_loss),
    ],
)
def test_the_loss_is_chosen_by_the_heads_class_name(name: str, loss_fn: Any) -> None:
    assert loss_for_model(_named(name)) is loss_fn


def test_a_subclass_of_a_known_head_is_recognised() -> None:
    base = type("TinyForMaskedLM", (torch.nn.Module,), {})
    custom = type("MyModel", (base,), {})()
    assert loss_for_model(custom) is masked_lm_loss


def test_the_configs_architectures_and_the_loss_type_name_the_head() -> None:
    by_config = _named("Custom", config=SimpleNamespace(architectures=["XForTokenClassification"]))
    assert loss_for_model(by_config) is token_classification_loss
    assert loss_for_model(_named("Custom", loss_type="ForCausalLM")) is causal_lm_loss


def test_an_ambiguous_with_lm_head_model_is_passed_over() -> None:
    # XLMWithLMHeadModel ends like GPT2LMHeadModel but may be masked or causal: not guessed.
    with pytest.raises(ValueError, match="but got XLMWithLMHeadModel"):
        loss_for_model(_named("XLMWithLMHeadModel"))
    config = SimpleNamespace(architectures=["XLMForMaskedLM"])
    assert loss_for_model(_named("XLMWithLMHeadModel", config=config)) is masked_lm_loss


def test_wrappers_are_looked_through() -> None:
    inner = _named("TinyForCausalLM")
    assert loss_for_model(torch.nn.DataParallel(inner)) is causal_lm_loss
    # What torch.compile returns: an OptimizedModule holding the original as `_orig_mod`.
    compiled = _named("OptimizedModule", _orig_mod=inner)
    assert loss_for_model(compiled) is causal_lm_loss
    compiled_parallel = _named("OptimizedModule", _orig_mod=torch.nn.DataParallel(inner))
    assert loss_for_model(compiled_parallel) is causal_lm_loss


def test_an_unknown_head_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"but got Linear\. Pass loss_fn=your_loss"):
        loss_for_model(torch.nn.Linear(2, 2))
