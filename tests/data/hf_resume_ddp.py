"""Run under torchrun by tests/test_integration_transformers.py: a sifted Trainer run on 2 ranks,
uninterrupted, then stopped after a checkpoint and resumed from it; each rank writes what every
step trained (sample ids or inputs) and at which learning rate, as JSON, for the test to compare.

    torchrun --nproc_per_node=2 hf_resume_ddp.py --mode reuse --save 6 --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

import smartsift as ss
from smartsift.integrations.transformers import enable_sifting

N, LENGTH, VOCAB = 128, 8, 40


class Recording(Trainer):
    """Records each step's sample ids (loss reuse) or inputs (scoring) and learning rate."""

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        lr = self.optimizer.param_groups[0]["lr"]  # type: ignore[union-attr]
        ids = inputs.get("smartsift_ids", inputs["input_ids"])
        self.trained.append([self.state.global_step, ids.tolist(), lr])
        return super().training_step(model, inputs, *args, **kwargs)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def data() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (N, LENGTH), generator=g)
    return [{"input_ids": row, "labels": int(row[0] >= VOCAB // 2)} for row in ids]


def run(mode: str, out: str, save: int, stop: int | None, resume: str | None) -> list[Any]:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=LENGTH, num_labels=2,
    )  # fmt: skip
    args = TrainingArguments(
        out, per_device_train_batch_size=8, num_train_epochs=3, learning_rate=1e-3,
        save_strategy="steps", save_steps=save, logging_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, seed=0, lr_scheduler_type="linear",
    )  # fmt: skip
    trainer = Recording(
        model=BertForSequenceClassification(config), args=args, train_dataset=data(),
        data_collator=default_data_collator,
    )  # fmt: skip
    trainer.trained = []  # type: ignore[attr-defined]
    enable_sifting(trainer, ss.TopK(0.5), mode=mode)
    if stop is not None:
        trainer.add_callback(StopAt(stop))
    trainer.train(resume_from_checkpoint=resume)
    trained = list(trainer.trained)  # type: ignore[attr-defined]
    del trainer
    gc.collect()
    return trained


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["reuse", "scoring"])
    parser.add_argument("--save", type=int)
    parser.add_argument("--out")
    a = parser.parse_args()
    torch.set_num_threads(1)
    full = run(a.mode, os.path.join(a.out, "full"), a.save, None, None)
    cut = os.path.join(a.out, "cut")
    run(a.mode, cut, a.save, a.save + 1, None)
    resumed = run(a.mode, cut, a.save, None, os.path.join(cut, f"checkpoint-{a.save}"))
    rank = dist.get_rank() if dist.is_initialized() else 0
    Path(a.out, f"rank{rank}.json").write_text(json.dumps({"full": full, "resumed": resumed}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
