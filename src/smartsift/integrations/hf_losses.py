"""Per-sample losses of the common Hugging Face Transformers heads, for the scoring pass.

Each is a pure ``loss_fn(model, batch) -> Tensor`` of shape ``(B,)`` over a batch as the
Trainer's collators build it: a mapping of tensors with a ``labels`` entry (for causal language
modelling the labels may be left out). The model is called without its labels, so it computes
no loss of its own; its logits are reduced per sample the way the model reduces them over the
batch, so that the per-sample losses, averaged with the right weights, equal the model's own
``outputs.loss``:

- sequence classification: cross entropy (regression when ``num_labels == 1`` or
  ``problem_type == "regression"``: squared error; multi-label: binary cross entropy averaged
  over the labels); the model's loss is the plain mean.
- token classification, masked and causal language modelling: cross entropy averaged over the
  sequence's tokens whose label is not -100 (0 for a sequence with none); the model's loss is
  the mean weighted by those token counts. Causal LM applies the model's one-token shift
  (logits at position t predict the label at t + 1).

:func:`loss_for_model` picks one from the model's class name (``*ForSequenceClassification``,
``*ForTokenClassification``, ``*ForMaskedLM``, ``*ForCausalLM`` or ``*LMHeadModel``).

Example:
    >>> import torch
    >>> class Head(torch.nn.Module):  # stands in for a *ForSequenceClassification model
    ...     def forward(self, input_ids):
    ...         return {"logits": torch.nn.functional.one_hot(input_ids[:, 0], 2).float()}
    >>> batch = {"input_ids": torch.tensor([[0, 1], [1, 1]]), "labels": torch.tensor([0, 0])}
    >>> sequence_classification_loss(Head(), batch).round(decimals=4)
    tensor([0.3133, 1.3133])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from smartsift.modes.scoring import LossFn, unwrap_model

__all__ = [
    "IGNORE_INDEX",
    "OutputsLossFn",
    "causal_lm_loss",
    "loss_for_model",
    "masked_lm_loss",
    "outputs_loss_for_model",
    "sequence_classification_loss",
    "token_classification_loss",
    "token_mean_cross_entropy",
]

IGNORE_INDEX = -100
"""The label of positions that carry no loss (the Hugging Face convention)."""


def sequence_classification_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-sample loss of a ``*ForSequenceClassification`` model, as its ``problem_type`` says.

    ``problem_type`` is read from ``model.config``; when unset it is inferred as the model infers
    it (without writing it to the config): regression for one label, single-label classification
    for integer labels, multi-label classification otherwise.

    Example:
        >>> import torch
        >>> class Regressor(torch.nn.Module):
        ...     def forward(self, x):
        ...         return (x.sum(1, keepdim=True),)  # a tuple output: logits first
        >>> batch = {"x": torch.ones(2, 3), "labels": torch.tensor([3.0, 1.0])}
        >>> sequence_classification_loss(Regressor(), batch)
        tensor([0., 4.])
    """
    inputs, labels = _split(batch, "sequence_classification_loss")
    return _classification_from_logits(model, _logits(model(**inputs)), labels)


def _classification_from_logits(
    model: torch.nn.Module, logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    logits = logits.float()
    n = logits.shape[0]
    config = getattr(model, "config", None)
    num_labels = int(getattr(config, "num_labels", logits.shape[-1]))
    problem = getattr(config, "problem_type", None) or _infer_problem_type(num_labels, labels)
    if problem == "regression":
        target = labels.to(logits.dtype)
        if num_labels == 1:
            return (logits.reshape(n) - target.reshape(n)) ** 2
        return ((logits - target) ** 2).reshape(n, -1).mean(1)
    if problem == "single_label_classification":
        return F.cross_entropy(
            logits.reshape(-1, num_labels),
            labels.reshape(-1).long(),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
    if problem == "multi_label_classification":
        bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
        return bce.reshape(n, -1).mean(1)
    raise ValueError(
        f"Expected `model.config.problem_type` to be 'regression', 'single_label_classification' "
        f"or 'multi_label_classification', but got {problem!r}; pass your own loss_fn."
    )


def token_classification_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-sequence mean cross entropy of a ``*ForTokenClassification`` model.

    The mean runs over the tokens whose label is not -100; a sequence with none scores 0.

    Example:
        >>> import torch
        >>> class Tagger(torch.nn.Module):
        ...     def forward(self, input_ids):
        ...         return {"logits": torch.zeros(*input_ids.shape, 3)}
        >>> batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long),
        ...          "labels": torch.tensor([[0, 1, -100, -100], [-100] * 4])}
        >>> token_classification_loss(Tagger(), batch).round(decimals=4)
        tensor([1.0986, 0.0000])
    """
    inputs, labels = _split(batch, "token_classification_loss")
    return token_mean_cross_entropy(_logits(model(**inputs)), labels)


def masked_lm_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-sequence mean cross entropy of a ``*ForMaskedLM`` model over its masked positions.

    Masked positions are those whose label is not -100 (as ``DataCollatorForLanguageModeling``
    marks them); a sequence with no masked token scores 0.

    Example:
        >>> import torch
        >>> class MLM(torch.nn.Module):
        ...     def forward(self, input_ids):
        ...         return {"logits": torch.zeros(*input_ids.shape, 4)}
        >>> batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long),
        ...          "labels": torch.tensor([[-100, 2, -100], [-100, -100, -100]])}
        >>> masked_lm_loss(MLM(), batch).round(decimals=4)
        tensor([1.3863, 0.0000])
    """
    inputs, labels = _split(batch, "masked_lm_loss")
    return token_mean_cross_entropy(_logits(model(**inputs)), labels)


def causal_lm_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Per-sequence mean next-token cross entropy of a ``*ForCausalLM`` model.

    The logits at position t are scored against the label at t + 1 (the shift the model
    applies); the mean runs over the shifted labels that are not -100, and a sequence with none
    scores 0. Without ``labels`` in the batch the labels are ``input_ids`` with the positions
    where ``attention_mask`` is 0 set to -100, as ``DataCollatorForLanguageModeling(mlm=False)``
    builds them.

    Example:
        >>> import torch
        >>> class LM(torch.nn.Module):
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return {"logits": torch.zeros(*input_ids.shape, 5)}
        >>> batch = {"input_ids": torch.tensor([[1, 2, 3], [4, 0, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])}
        >>> causal_lm_loss(LM(), batch).round(decimals=4)  # the second has no next token
        tensor([1.6094, 0.0000])
    """
    if not isinstance(batch, Mapping):
        raise TypeError(_not_a_mapping("causal_lm_loss", batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not None:
        inputs.setdefault("use_cache", False)  # no key/value cache: scoring never generates
    logits = _logits(model(**inputs))
    return token_mean_cross_entropy(logits, _next_token_labels(batch))


def _next_token_labels(batch: Mapping[str, Any]) -> torch.Tensor:
    """The labels a causal LM scores position t against: the label (or token) at t + 1."""
    labels = batch.get("labels")
    if labels is None:
        if "input_ids" not in batch:
            raise ValueError(
                "Expected the batch to hold `labels` or `input_ids` for causal_lm_loss, but it "
                f"holds {sorted(batch)}."
            )
        labels = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # label t + 1 at position t


def token_mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of ``(B, T, C)`` logits against ``(B, T)`` labels, averaged per sequence.

    Positions labelled -100 are left out; a sequence with none scores 0.

    Example:
        >>> import torch
        >>> token_mean_cross_entropy(torch.zeros(1, 2, 2), torch.tensor([[1, -100]]))
        tensor([0.6931])
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            "Expected logits of shape (B, T, C) and labels of shape (B, T), but got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}."
        )
    b, t, c = logits.shape
    labels = labels.to(logits.device).long()
    per_token = F.cross_entropy(
        logits.reshape(b * t, c).float(),  # upcast, as the models do for their own loss
        labels.reshape(b * t),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).reshape(b, t)
    counts = (labels != IGNORE_INDEX).sum(1)
    return per_token.sum(1) / counts.clamp(min=1)


_HEADS: tuple[tuple[tuple[str, ...], LossFn], ...] = (
    (("ForSequenceClassification",), sequence_classification_loss),
    (("ForTokenClassification",), token_classification_loss),
    (("ForMaskedLM",), masked_lm_loss),
    (("ForCausalLM", "LMHeadModel"), causal_lm_loss),
)


def loss_for_model(model: torch.nn.Module) -> LossFn:
    """Returns the per-sample loss for ``model``'s head, chosen by its class name.

    The names of the model's classes (its own and its bases, so a subclass of
    ``BertForSequenceClassification`` is recognised), then ``model.config.architectures``, then
    ``model.loss_type`` are matched against the endings ``ForSequenceClassification``,
    ``ForTokenClassification``, ``ForMaskedLM`` and ``ForCausalLM`` / ``LMHeadModel``
    (``GPT2LMHeadModel``). DDP and ``torch.compile`` wrappers are looked through.

    Raises:
        ValueError: if no name matches a known head; pass your own ``loss_fn`` then.

    Example:
        >>> import torch
        >>> class TinyForTokenClassification(torch.nn.Module):
        ...     pass
        >>> loss_for_model(TinyForTokenClassification()).__name__
        'token_classification_loss'
    """
    inner = unwrap_model(model)
    inner = getattr(inner, "_orig_mod", inner)  # a compiled module: its original class
    config = getattr(inner, "config", None)
    names = [cls.__name__ for cls in type(inner).__mro__]
    names += list(getattr(config, "architectures", None) or [])
    loss_type = getattr(inner, "loss_type", None)
    if isinstance(loss_type, str):
        names.append(loss_type)
    for name in names:
        if name.endswith("WithLMHeadModel"):  # XLM, Flaubert: masked or causal, unclear
            continue
        for endings, loss_fn in _HEADS:
            if name.endswith(endings):
                return loss_fn
    raise ValueError(
        f"Expected a model with a sequence classification, token classification, masked LM or "
        f"causal LM head (a class named *ForSequenceClassification, *ForTokenClassification, "
        f"*ForMaskedLM or *ForCausalLM), but got {type(inner).__name__}. Pass "
        "loss_fn=your_loss(model, batch) returning one loss per sample."
    )


OutputsLossFn = Callable[
    [torch.nn.Module, Any, Mapping[str, Any]], tuple[torch.Tensor, torch.Tensor]
]
"""``fn(model, outputs, batch) -> (losses, weights)``: per-sample losses from a forward pass
already run, and each sample's weight in the model's own loss (its counted tokens)."""


def outputs_loss_for_model(model: torch.nn.Module) -> OutputsLossFn:
    """The per-sample losses of ``model``'s head computed from outputs it already returned.

    Loss reuse records the losses of the training step itself: the Trainer's forward pass has
    run, so no second one is made. The head is found as :func:`loss_for_model` finds it. The
    function returns ``(losses, weights)``, both ``(B,)``: the losses are those of
    :func:`loss_for_model`'s function on the same batch, and the weights the share each sample
    has in the model's own loss (1 for sequence classification; the counted tokens for token
    classification and language modelling), so that ``(weights * losses).sum() /
    weights.sum()`` is the model's ``outputs.loss`` for a batch on its own.

    Raises:
        ValueError: as :func:`loss_for_model`.

    Example:
        >>> import torch
        >>> class TinyForTokenClassification(torch.nn.Module):
        ...     pass
        >>> fn = outputs_loss_for_model(TinyForTokenClassification())
        >>> outputs = {"logits": torch.zeros(1, 3, 2)}
        >>> losses, weights = fn(None, outputs, {"labels": torch.tensor([[0, 1, -100]])})
        >>> losses.round(decimals=4), weights
        (tensor([0.6931]), tensor([2.]))
    """
    head = loss_for_model(model)
    if head is sequence_classification_loss:
        return _classification_outputs
    if head is causal_lm_loss:
        return _causal_outputs
    return _token_outputs


def _classification_outputs(
    model: torch.nn.Module, outputs: Any, batch: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    _, labels = _split(batch, "sequence_classification_loss")
    losses = _classification_from_logits(unwrap_model(model), _logits(outputs), labels)
    return losses, torch.ones_like(losses)


def _token_outputs(
    model: torch.nn.Module, outputs: Any, batch: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    _, labels = _split(batch, "token_mean_cross_entropy")
    return _with_token_counts(_logits(outputs), labels)


def _causal_outputs(
    model: torch.nn.Module, outputs: Any, batch: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, Mapping):
        raise TypeError(_not_a_mapping("causal_lm_loss", batch))
    return _with_token_counts(_logits(outputs), _next_token_labels(batch))


def _with_token_counts(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    losses = token_mean_cross_entropy(logits, labels)
    counts = (labels.to(losses.device) != IGNORE_INDEX).sum(1).to(losses.dtype)
    return losses, counts


def _split(batch: Any, name: str) -> tuple[dict[str, Any], torch.Tensor]:
    """The model inputs (everything but ``labels``) and the labels of a batch."""
    if not isinstance(batch, Mapping):
        raise TypeError(_not_a_mapping(name, batch))
    labels = batch.get("labels")
    if labels is None:
        raise ValueError(
            f"Expected the batch to hold `labels` for {name}, but it holds {sorted(batch)}. "
            "Name the label column 'labels' (the collators rename 'label' to it)."
        )
    return {k: v for k, v in batch.items() if k != "labels"}, labels


def _not_a_mapping(name: str, batch: Any) -> str:
    return (
        f"Expected the batch passed to {name} to be a mapping of model inputs (as the Hugging "
        f"Face collators build), but got {type(batch).__name__}."
    )


def _logits(outputs: Any) -> torch.Tensor:
    """The logits of a model's outputs: ``outputs.logits``, ``outputs["logits"]`` or the first."""
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if logits is None and isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"Expected the model to return logits (an output with .logits, or a tuple with the "
            f"logits first), but got {type(outputs).__name__}."
        )
    return logits


def _infer_problem_type(num_labels: int, labels: torch.Tensor) -> str:
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"
