"""The Hugging Face Trainer integration: per-sample head losses, sifted training, DDP.

Tiny models are built from config objects and a word-level tokenizer from code: nothing is
downloaded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _ddp import torchrun_copied  # noqa: E402
from tokenizers import Tokenizer, models  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMHeadModel,
    BertModel,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import smartsift as ss  # noqa: E402
from smartsift.integrations import hf_losses  # noqa: E402
from smartsift.integrations.hf_reuse import ID_KEY, TrainerReuse, reweighted  # noqa: E402
from smartsift.integrations.transformers import TrainerSifting, enable_sifting  # noqa: E402

VOCAB, LENGTH, N, BATCH = 50, 12, 128, 16  # 8 raw batches per epoch
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(VOCAB - 2)}}
    model = models.WordLevel(vocab, unk_token="[UNK]")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(model), pad_token="[PAD]", unk_token="[UNK]"
    )


def sentences(n: int = N, *, labelled: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` token sequences of 3 to LENGTH tokens (as a tokenizer gives them, unpadded)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, LENGTH + 1, (1,), generator=g))
        ids = torch.randint(2, VOCAB, (length,), generator=g).tolist()
        item: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * length}
        if labelled:
            item["label"] = int(ids[0] >= VOCAB // 2)
        out.append(item)
    return out


def bert_config(**kw: Any) -> BertConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=LENGTH,
    )
    return BertConfig(**{**base, **kw})


def gpt2_config() -> GPT2Config:
    return GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=LENGTH)


def training_args(tmp_path: Path, **kw: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        num_train_epochs=2,
        learning_rate=1e-3,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**{**base, **kw})


def classifier_trainer(tmp_path: Path, tokenizer: Any, **kw: Any) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        model=BertForSequenceClassification(bert_config(num_labels=2)),
        args=training_args(tmp_path, **kw),
        train_dataset=sentences(),
        data_collator=DataCollatorWithPadding(tokenizer, padding="max_length", max_length=LENGTH),
    )


def collate(tokenizer: Any, items: list[dict[str, Any]], **kw: Any) -> dict[str, torch.Tensor]:
    return dict(DataCollatorWithPadding(tokenizer, **kw)(items))


def weighted(per_sample: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return (per_sample * counts).sum() / counts.sum()


# ------------------------------------------------------------------ per-sample head losses
@pytest.mark.parametrize(
    ("num_labels", "problem_type"),
    [(2, None), (1, None), (3, "multi_label_classification"), (2, "regression")],
)
def test_sequence_classification_loss_averages_to_the_models_loss(
    tokenizer: Any, num_labels: int, problem_type: str | None
) -> None:
    torch.manual_seed(0)
    config = bert_config(num_labels=num_labels, problem_type=problem_type)
    model = BertForSequenceClassification(config).eval()
    batch = collate(tokenizer, [{k: v for k, v in s.items() if k != "label"} for s in sentences(6)])
    if problem_type == "multi_label_classification":
        batch["labels"] = torch.randint(0, 2, (6, num_labels)).float()
    elif num_labels == 1 or problem_type == "regression":
        batch["labels"] = torch.randn(6, num_labels).squeeze(-1)
    else:
        batch["labels"] = torch.tensor([0, 1, 1, 0, 1, 0])
    with torch.no_grad():
        per_sample = hf_losses.sequence_classification_loss(model, batch)
        expected = model(**batch).loss
    assert per_sample.shape == (6,)
    torch.testing.assert_close(per_sample.mean(), expected)


def test_token_classification_loss_is_a_per_sequence_mean_over_labelled_tokens(
    tokenizer: Any,
) -> None:
    torch.manual_seed(0)
    model = BertForTokenClassification(bert_config(num_labels=4)).eval()
    batch = collate(tokenizer, sentences(5, labelled=False))
    labels = torch.randint(0, 4, batch["input_ids"].shape)
    labels[batch["attention_mask"] == 0] = -100
    labels[:, 0] = -100  # a special token
    labels[2] = -100  # a sequence with no labelled token scores 0
    batch["labels"] = labels
    with torch.no_grad():
        per_sample = hf_losses.token_classification_loss(model, batch)
        expected = model(**batch).loss
    assert per_sample[2] == 0
    torch.testing.assert_close(weighted(per_sample, (labels != -100).sum(1)), expected)


def test_causal_lm_loss_applies_the_shift_and_defaults_labels_to_the_unpadded_inputs(
    tokenizer: Any,
) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config()).eval()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    batch = dict(collator(sentences(6, labelled=False)))
    with torch.no_grad():
        per_sample = hf_losses.causal_lm_loss(model, batch)
        expected = model(**batch).loss
        without_labels = hf_losses.causal_lm_loss(
            model, {k: v for k, v in batch.items() if k != "labels"}
        )
    counts = (batch["labels"][:, 1:] != -100).sum(1)  # tokens that have a next token
    torch.testing.assert_close(weighted(per_sample, counts), expected)
    torch.testing.assert_close(without_labels, per_sample)
    # Each sequence's loss is its own: the other samples of the batch do not change it.
    with torch.no_grad():
        alone = hf_losses.causal_lm_loss(model, {k: v[3:4] for k, v in batch.items()})
    torch.testing.assert_close(alone, per_sample[3:4])


def test_masked_lm_loss_averages_over_masked_positions_and_is_zero_without_any(
    tokenizer: Any,
) -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config()).eval()
    batch = collate(tokenizer, sentences(4, labelled=False))
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 1], labels[0, 2], labels[1, 0], labels[3, 2] = 5, 7, 9, 11
    batch["labels"] = labels
    with torch.no_grad():
        per_sample = hf_losses.masked_lm_loss(model, batch)
        expected = model(**batch).loss
    assert per_sample[2] == 0
    torch.testing.assert_close(weighted(per_sample, (labels != -100).sum(1)), expected)


def test_the_loss_is_chosen_from_the_models_head() -> None:
    class MyClassifier(BertForSequenceClassification):
        pass

    cases = {
        MyClassifier(bert_config()): hf_losses.sequence_classification_loss,
        BertForTokenClassification(bert_config()): hf_losses.token_classification_loss,
        BertForMaskedLM(bert_config()): hf_losses.masked_lm_loss,
        BertLMHeadModel(bert_config(is_decoder=True)): hf_losses.causal_lm_loss,
        GPT2LMHeadModel(gpt2_config()): hf_losses.causal_lm_loss,
    }
    for model, loss_fn in cases.items():
        assert hf_losses.loss_for_model(model) is loss_fn, type(model).__name__
    with pytest.raises(ValueError, match="BertModel"):
        hf_losses.loss_for_model(BertModel(bert_config()))


def test_a_loss_without_labels_or_mapping_says_what_it_needs() -> None:
    model = BertForSequenceClassification(bert_config())
    with pytest.raises(ValueError, match="labels"):
        hf_losses.sequence_classification_loss(model, {"input_ids": torch.ones(2, 3).long()})
    with pytest.raises(TypeError, match="mapping"):
        hf_losses.masked_lm_loss(model, (torch.ones(2, 3),))


# ------------------------------------------------------------------ training through Trainer
def assert_schedule_ended(trainer: Trainer) -> None:
    """The (linear) schedule reached its end exactly when training ended."""
    assert trainer.lr_scheduler.last_epoch == trainer.state.max_steps
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_an_epoch_based_classifier_trains_on_the_kept_half_and_finishes_its_epochs(
    tmp_path: Path, tokenizer: Any
) -> None:
    trainer = classifier_trainer(tmp_path, tokenizer)
    sifting = enable_sifting(trainer, ss.TopK(0.5))
    assert sifting.loss_fn is hf_losses.sequence_classification_loss
    trainer.train()
    stats, state = sifting.stats, trainer.state
    # TopK(0.5) keeps 8 of every raw batch of 16: 4 refined batches per epoch of 8.
    assert stats.samples_seen == 2 * N and stats.samples_trained == N == stats.samples_kept
    assert state.global_step == stats.steps == 8 and stats.epochs == 2
    assert state.max_steps == 16  # the Trainer's unsifted count: the most an epoch can give
    assert state.epoch == 2.0
    assert_schedule_ended(trainer)
    train_logs = [log for log in state.log_history if "loss" in log]
    assert len(train_logs) == 4
    assert all(log["smartsift/keep_rate"] == 0.5 for log in train_logs)
    assert [log["smartsift/samples_trained"] for log in train_logs] == [32, 64, 96, 128]
    assert [log["epoch"] for log in train_logs] == [0.5, 1.0, 1.5, 2.0]  # data, not steps
    final = state.log_history[-1]
    assert final["smartsift/samples_seen"] == 2 * N and "train_loss" in final


def test_a_causal_lm_trains_sifted_with_the_lm_collator(tmp_path: Path, tokenizer: Any) -> None:
    torch.manual_seed(0)
    trainer = Trainer(
        model=GPT2LMHeadModel(gpt2_config()),
        args=training_args(tmp_path, warmup_steps=0.25),
        train_dataset=sentences(labelled=False),
        data_collator=DataCollatorForLanguageModeling(
            tokenizer, mlm=False, pad_to_multiple_of=LENGTH
        ),
    )
    sifting = enable_sifting(trainer, ss.RelativeProbabilistic(beta=1.0, history=64), sift_delay=2)
    assert sifting.loss_fn is hf_losses.causal_lm_loss
    trainer.train()
    stats, state = sifting.stats, trainer.state
    assert stats.samples_seen == 2 * N and stats.samples_sifted > 0
    assert stats.samples_trained == stats.samples_kept < stats.samples_seen
    assert state.global_step == stats.steps < state.max_steps
    assert stats.epochs == 2 and state.epoch == 2.0
    assert_schedule_ended(trainer)
    assert any("smartsift/loss_p50" in log for log in state.log_history)


def test_max_steps_runs_as_many_sifted_epochs_as_its_steps_need(
    tmp_path: Path, tokenizer: Any
) -> None:
    trainer = classifier_trainer(tmp_path, tokenizer, max_steps=10)
    sifting = enable_sifting(trainer, ss.TopK(0.5))
    trainer.train()
    # 4 sifted steps per epoch: two whole epochs, then 2 steps of the third.
    assert trainer.state.global_step == trainer.state.max_steps == 10
    assert sifting.stats.epochs == 2 and sifting.stats.steps == 10
    assert_schedule_ended(trainer)


def test_a_fractional_epoch_count_stops_when_that_much_data_was_consumed(
    tmp_path: Path, tokenizer: Any
) -> None:
    trainer = classifier_trainer(tmp_path, tokenizer, num_train_epochs=1.5)
    sifting = enable_sifting(trainer, ss.TopK(0.5))
    trainer.train()
    assert sifting.stats.raw_batches == 12 and trainer.state.global_step == 6
    assert trainer.state.epoch == 1.5
    assert_schedule_ended(trainer)


def test_gradient_accumulation_steps_once_per_group_of_sifted_batches(
    tmp_path: Path, tokenizer: Any
) -> None:
    trainer = classifier_trainer(tmp_path, tokenizer, gradient_accumulation_steps=2)
    sifting = enable_sifting(trainer, ss.TopK(0.5))
    trainer.train()
    assert sifting.stats.steps == 8 and trainer.state.global_step == 4
    assert_schedule_ended(trainer)


@pytest.mark.parametrize("processing_class", [True, False])
def test_batches_padded_to_their_own_length_train_with_a_padding_spec(
    tmp_path: Path, tokenizer: Any, processing_class: bool
) -> None:
    # The pad token comes from the Trainer's processing_class, else from the collator's own
    # tokenizer (a Trainer built with only DataCollatorWithPadding(tokenizer)).
    torch.manual_seed(0)
    trainer = Trainer(
        model=BertForSequenceClassification(bert_config(num_labels=2)),
        args=training_args(tmp_path),
        train_dataset=sentences(),
        processing_class=tokenizer if processing_class else None,
        data_collator=DataCollatorWithPadding(tokenizer),  # pads to each batch's longest
    )
    lengths = {len(b["input_ids"][0]) for b in trainer.get_train_dataloader()}
    assert len(lengths) > 1  # the raw batches really differ in length
    sifting = enable_sifting(trainer, ss.TopK(0.5))  # padding from the tokenizer, by default
    assert sifting.loader is None or sifting.loader.padding is not None
    trainer.train()
    assert sifting.stats.samples_trained == N and trainer.state.global_step == 8
    assert isinstance(sifting.loader.padding, ss.Padding)  # type: ignore[union-attr]


# ------------------------------------------------------------------ set-up and errors
def test_importing_smartsift_and_the_head_losses_does_not_import_transformers() -> None:
    code = (
        "import sys, smartsift, smartsift.integrations, smartsift.integrations.hf_losses; "
        "print(sorted(m for m in ('transformers', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_disable_gives_the_trainer_its_own_loader_back(tmp_path: Path, tokenizer: Any) -> None:
    trainer = classifier_trainer(tmp_path, tokenizer)
    sifting = enable_sifting(trainer, ss.TopK(0.5))
    assert isinstance(sifting, TrainerSifting)
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_sifting(trainer)
    sifted = trainer.get_train_dataloader()
    assert len(sifted) == 8 and sifting.loader is not None
    assert next(iter(sifted))["input_ids"].shape == (BATCH, LENGTH)
    sifting.disable()
    assert "get_train_dataloader" not in vars(trainer) and "log" not in vars(trainer)
    assert sifting.callback not in trainer.callback_handler.callbacks
    assert type(trainer.get_train_dataloader()).__name__ == "DataLoaderShard"
    enable_sifting(trainer)  # and it can be enabled again


def test_invalid_settings_fail_when_sifting_is_enabled(tmp_path: Path, tokenizer: Any) -> None:
    trainer = classifier_trainer(tmp_path, tokenizer)
    with pytest.raises(TypeError, match=r"transformers\.Trainer"):
        enable_sifting(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batchsize"):
        enable_sifting(trainer, batchsize=8)
    with pytest.raises(TypeError, match="model"):
        enable_sifting(trainer, model=trainer.model)
    with pytest.raises(ValueError, match="sift_delay"):
        enable_sifting(trainer, sift_delay=-1)
    bare = Trainer(model=BertModel(bert_config()), args=training_args(tmp_path))
    with pytest.raises(ValueError, match="loss_fn"):
        enable_sifting(bare)
    assert "get_train_dataloader" not in vars(trainer)  # nothing was attached


# ------------------------------------------------------------------ DDP under torchrun
def run_example_on_two_ranks(
    tmp_path: Path, args: list[str]
) -> tuple[dict[str, str], dict[str, str], str]:
    """Runs examples/hf_trainer.py under torchrun; returns each rank's printed fields and the
    whole output."""
    proc = torchrun_copied(EXAMPLES / "hf_trainer.py", tmp_path, args, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    ranks = {}
    # Only the key=value run after each "[rank N]": the ranks' other prints may share its line.
    for match in re.finditer(r"\[rank (\d+)\]((?: [a-z_]+=[^\s\[{]+)+)", proc.stdout):
        ranks[int(match.group(1))] = dict(t.split("=", 1) for t in match.group(2).split())
    assert sorted(ranks) == [0, 1], out
    return ranks[0], ranks[1], out


def test_the_example_trains_in_lockstep_on_two_ranks_under_torchrun(tmp_path: Path) -> None:
    args = ["--mode=scoring", "--epochs=2", "--samples=256", "--sift-delay=2"]
    zero, one, out = run_example_on_two_ranks(tmp_path, args)
    assert zero["global_step"] == one["global_step"] == zero["steps"] == one["steps"], out
    assert int(zero["steps"]) > 0 and zero["epochs"] == one["epochs"] == "2", out
    assert zero["epoch"] == one["epoch"] == "2.00" and float(zero["lr"]) == 0.0, out
    for fields in (zero, one):  # each rank saw its own half of the data, twice
        assert int(fields["seen"]) == 256
        assert int(fields["trained"]) < int(fields["seen"])


# ------------------------------------------------------------------ loss reuse
class RecordingTrainer(Trainer):
    """Records each training step's sample ids (loss reuse) or inputs (scoring) and learning
    rate, before the step."""

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        lr = self.optimizer.param_groups[0]["lr"]  # type: ignore[union-attr]
        ids = inputs[ID_KEY] if ID_KEY in inputs else inputs["input_ids"]
        self.trained.append((self.state.global_step, ids.tolist(), lr))
        return super().training_step(model, inputs, *args, **kwargs)


def reuse_trainer(tmp_path: Path, tokenizer: Any, dropout: float = 0.1, **kw: Any) -> Any:
    """A classifier whose collator pads each batch to its longest (no processing_class)."""
    torch.manual_seed(0)
    config = bert_config(
        num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
    )
    trainer = RecordingTrainer(
        model=BertForSequenceClassification(config),
        args=training_args(tmp_path, **kw),
        train_dataset=sentences(),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.trained = []  # type: ignore[attr-defined]
    return trainer


@pytest.mark.parametrize(
    "head", ["sequence", "token", "masked", "causal"], ids=lambda h: f"{h}_head"
)
def test_losses_from_the_training_steps_outputs_match_the_scoring_losses_and_the_models(
    tokenizer: Any, head: str
) -> None:
    torch.manual_seed(0)
    items = sentences(6)
    batch = collate(tokenizer, [{k: v for k, v in i.items() if k != "label"} for i in items])
    if head == "sequence":
        model: Any = BertForSequenceClassification(bert_config(num_labels=3))
        batch["labels"] = torch.tensor([0, 1, 2, 0, 1, 2])
    elif head == "token":
        model = BertForTokenClassification(bert_config(num_labels=3))
        batch["labels"] = torch.randint(0, 3, batch["input_ids"].shape).masked_fill(
            batch["attention_mask"] == 0, -100
        )
    elif head == "masked":
        model = BertForMaskedLM(bert_config())
        labels = batch["input_ids"].masked_fill(torch.rand(batch["input_ids"].shape) < 0.5, -100)
        batch["labels"] = labels.masked_fill(batch["attention_mask"] == 0, -100)
    else:
        model = GPT2LMHeadModel(gpt2_config())
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.eval()
    outputs = model(**batch)  # the training step's own forward pass, labels included
    losses, shares = hf_losses.outputs_loss_for_model(model)(model, outputs, batch)
    scoring = hf_losses.loss_for_model(model)(model, batch)
    torch.testing.assert_close(losses, scoring, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted(losses, shares), outputs.loss, rtol=1e-5, atol=1e-6)


def test_reweighting_the_models_loss_weights_each_samples_gradient() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    x, shares = torch.randn(5, 3), torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0])
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    losses = (x @ w) ** 2
    model_loss = (shares * losses).sum() / 7.0  # the model's own denominator, unknown to us
    (grad,) = torch.autograd.grad(
        reweighted(model_loss, losses, shares, weights), w, retain_graph=True
    )
    (expected,) = torch.autograd.grad((weights * shares * losses).sum() / 7.0, w)
    torch.testing.assert_close(grad, expected)


def test_loss_reuse_skips_learnt_samples_with_no_extra_pass_and_ends_its_schedule(
    tmp_path: Path, tokenizer: Any
) -> None:
    trainer = reuse_trainer(tmp_path, tokenizer, num_train_epochs=3)
    forwards = []
    trainer.model.register_forward_hook(lambda *_: forwards.append(1))
    reuse = enable_sifting(trainer, ss.TopK(0.5), mode="reuse")
    assert isinstance(reuse, TrainerReuse)
    trainer.train()
    epochs = reuse.sampler.epoch_stats  # type: ignore[union-attr]
    assert [epochs[e].trained for e in range(3)] == [N, N // 2, N // 2]
    assert [epochs[e].sifted for e in range(3)] == [0, N // 2, N // 2]
    steps = [8, 4, 4]  # batches of 16: 128, then the kept 64 twice
    assert trainer.state.global_step == sum(steps) == len(forwards)  # one forward per step
    trained = [ids for _, ids, _ in trainer.trained]
    for e in range(3):
        ids = [i for batch in trained[sum(steps[:e]) : sum(steps[: e + 1])] for i in batch]
        assert len(ids) == len(set(ids)) == epochs[e].trained  # each kept sample once
    assert trainer.state.epoch == 3.0
    assert_schedule_ended(trainer)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs and logs[-1]["smartsift/keep_rate"] == 0.5
    assert reuse.table is not None and reuse.table.scored().all()


def test_loss_reuse_with_max_steps_runs_that_many_steps(tmp_path: Path, tokenizer: Any) -> None:
    trainer = reuse_trainer(tmp_path, tokenizer, max_steps=14)
    reuse = enable_sifting(trainer, ss.TopK(0.5), mode="reuse")
    trainer.train()
    assert trainer.state.global_step == 14 and reuse.epoch == 2  # 8 + 4 + 2 of the third
    assert_schedule_ended(trainer)


@pytest.mark.parametrize(
    ("mode", "save", "workers"),
    [("reuse", 10, 0), ("reuse", 12, 2), ("scoring", 6, 2), ("scoring", 8, 0)],
    ids=["reuse_mid_epoch", "reuse_epoch_end", "scoring_mid_epoch", "scoring_epoch_end"],
)
def test_a_sifted_run_resumes_from_a_trainer_checkpoint_exactly(
    tmp_path: Path, tokenizer: Any, mode: str, save: int, workers: int
) -> None:
    # Loss reuse: epochs of 8, 4, 4 and 4 batches (step 10 is inside the second, step 12 its
    # end). Scoring: 4 refined batches an epoch (step 6 inside the second, step 8 its end).
    kw = dict(
        num_train_epochs=4, save_strategy="steps", save_steps=save, logging_strategy="no",
        dataloader_num_workers=workers, lr_scheduler_type="linear",
    )  # fmt: skip

    def run(out: Path, resume: str | None = None, stop: int | None = None) -> Any:
        trainer = reuse_trainer(out, tokenizer, **kw)
        enable_sifting(trainer, ss.TopK(0.5), mode=mode)
        if stop is not None:
            trainer.add_callback(_StopAt(stop))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    run(tmp_path / "cut", stop=save + 2)
    assert (tmp_path / "cut" / f"checkpoint-{save}" / "smartsift_rank0.pt").is_file()
    resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / f"checkpoint-{save}"))
    expected = [step for step in full.trained if step[0] >= save]
    assert resumed.trained == expected  # the same samples, in order, at the same rates
    assert resumed.state.global_step == full.state.global_step == (20 if mode == "reuse" else 16)
    assert_schedule_ended(resumed)


class _StopAt(transformers.TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def test_loss_reuse_settings_are_checked_when_enabled(tmp_path: Path, tokenizer: Any) -> None:
    trainer = reuse_trainer(tmp_path, tokenizer)
    with pytest.raises(ValueError, match=r"`mode` to be 'scoring'.*or 'reuse'.*'replay'"):
        enable_sifting(trainer, mode="replay")
    with pytest.raises(TypeError, match=r"`sift_delay`=2 only apply to the scoring pass"):
        enable_sifting(trainer, mode="reuse", sift_delay=2)
    with pytest.raises(TypeError, match=r"`epochs`=3, which .* reads `num_train_epochs`"):
        enable_sifting(trainer, mode="reuse", epochs=3)
    with pytest.raises(TypeError, match="did you mean `max_age`"):
        enable_sifting(trainer, mode="reuse", max_ages=2)
    with pytest.raises(ValueError, match=r"`max_age`.*got 0"):
        enable_sifting(trainer, mode="reuse", max_age=0)
    assert "get_train_dataloader" not in vars(trainer)  # nothing was attached
    reuse = enable_sifting(trainer, mode="reuse")
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_sifting(trainer)
    reuse.disable()
    assert not {"get_train_dataloader", "compute_loss", "log"} & set(vars(trainer))


@pytest.mark.parametrize("mode", ["reuse", "scoring"])
def test_a_resume_without_the_sifting_state_says_where_it_looked(
    tmp_path: Path, tokenizer: Any, mode: str
) -> None:
    trainer = reuse_trainer(tmp_path, tokenizer)
    reuse = enable_sifting(trainer, mode=mode)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-3.*resume_from\(folder\)"):
        reuse.callback.on_train_begin(trainer.args, TrainerState(global_step=3), TrainerControl())


def test_the_example_reuses_losses_in_lockstep_on_two_ranks_under_torchrun(
    tmp_path: Path,
) -> None:
    args = ["--mode=reuse", "--epochs=3", "--samples=256"]
    zero, one, out = run_example_on_two_ranks(tmp_path, args)
    assert zero == one, out  # the same steps, decisions and table on both ranks
    assert zero["epochs"] == "3" and zero["epoch"] == "3.00" and float(zero["lr"]) == 0.0
    assert int(zero["candidates"]) == 3 * 256 > int(zero["trained"]) > 256
    assert "more than one rank" not in out  # accelerate shards the pruned list's batches


@pytest.mark.parametrize(("mode", "save"), [("reuse", 10), ("scoring", 5)])
def test_a_sifted_run_resumes_exactly_on_two_ranks_under_torchrun(
    tmp_path: Path, mode: str, save: int
) -> None:
    # Reuse: epochs of 8, 4 and 4 steps per rank (step 10 is inside the second); scoring: 4.
    script = Path(__file__).resolve().parent / "data" / "hf_resume_ddp.py"
    out = tmp_path / "out"
    args = [f"--mode={mode}", f"--save={save}", f"--out={out}"]
    proc = torchrun_copied(script, tmp_path, args, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for runs in ranks:
        expected = [step for step in runs["full"] if step[0] >= save]
        assert runs["resumed"] == expected  # the same samples, in order, at the same rates
        assert len(runs["full"]) == (16 if mode == "reuse" else 12)
    assert ranks[0]["full"] != ranks[1]["full"]  # each rank trained its own share
