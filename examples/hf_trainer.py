"""Fine-tune a tiny BERT classifier with the Hugging Face Trainer on sifted data.

One line turns sifting on: ``enable_sifting(trainer, policy, mode=...)``. Runs on the CPU in
seconds, in one process or under torchrun (every rank takes the same number of steps)::

    python examples/hf_trainer.py                     # loss reuse (the default here)
    python examples/hf_trainer.py --mode scoring      # an extra scoring pass per batch
    torchrun --nproc_per_node=2 examples/hf_trainer.py

``--mode reuse`` records the per-sample losses of the training step itself and skips, each
epoch, the samples they say are learnt: no extra forward pass. ``--mode scoring`` scores every
raw batch with a no-grad forward pass and trains the kept samples in refined batches.

Nothing is downloaded: the tokenizer (a word-level vocabulary) and the model are built from code,
and the task is synthetic (is the first token in the upper half of the vocabulary?). The
collator pads each batch to its own longest sentence; in the scoring mode smartsift re-pads kept
samples of different lengths with the tokenizer's pad id (``Padding.huggingface``, built from
the collator's tokenizer) and trims every refined batch to its longest sentence.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import zlib

import torch
import torch.distributed as dist
from tokenizers import Tokenizer, models
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

import smartsift as ss
from smartsift.integrations.transformers import enable_sifting

VOCAB = 50
MAX_LEN = 16


def parse_args() -> argparse.Namespace:
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--beta", type=float, default=1.0, help="selectivity (keeps 1/(1+beta))")
    parser.add_argument("--sift-delay", type=int, default=4, help="scoring: raw batches first")
    parser.add_argument("--mode", choices=["reuse", "scoring"], default="reuse")
    parser.add_argument("--keep", type=float, default=0.5, help="reuse: the kept share")
    return parser.parse_args()


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words ``w0`` ... ``w47``, built in memory."""
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(VOCAB - 2)}}
    model = models.WordLevel(vocab, unk_token="[UNK]")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(model), pad_token="[PAD]", unk_token="[UNK]"
    )


def make_data(n: int, seed: int = 0) -> list[dict[str, list[int] | int]]:
    """``n`` sentences of 4 to 16 random words, labelled by their first word."""
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n):
        length = int(torch.randint(4, MAX_LEN + 1, (1,), generator=g))
        ids = torch.randint(2, VOCAB, (length,), generator=g).tolist()
        data.append({"input_ids": ids, "attention_mask": [1] * length, "label": int(ids[0] >= 26)})
    return data


def main() -> None:
    """Trains, then prints this rank's steps and sifting stats."""
    args = parse_args()
    torch.set_num_threads(1)  # one core per process on a small CPU machine
    tokenizer = make_tokenizer()
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LEN,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="smartsift-hf-"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        warmup_steps=0.1,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=make_data(args.samples),
        data_collator=DataCollatorWithPadding(tokenizer),  # pads each batch to its longest
    )
    rank = int(os.environ.get("RANK", "0"))
    state = trainer.state
    if args.mode == "reuse":
        reuse = enable_sifting(  # the one line: losses recorded from the training step itself
            trainer, ss.RelativeProbabilistic(keep=args.keep), mode="reuse"
        )
        trainer.train()
        epochs = reuse.sampler.epoch_stats
        reuse.table.sync()  # under DDP: the last epoch's losses, exchanged before reading them
        digest = zlib.crc32(reuse.table.losses.tobytes())  # the same table on every rank
        print(
            f"[rank {rank}] global_step={trainer.state.global_step} "
            f"epoch={trainer.state.epoch:.2f} epochs={len(epochs)} "
            f"trained={sum(e.trained for e in epochs.values())} "
            f"candidates={sum(e.candidates for e in epochs.values())} "
            f"lr={trainer.lr_scheduler.get_last_lr()[0]:.2e} table={digest}",
            flush=True,
        )
    else:
        sifting = enable_sifting(  # the one line: loss chosen from the model's head
            trainer,
            ss.RelativeProbabilistic(beta=args.beta, history=200),
            sift_delay=args.sift_delay,
        )
        trainer.train()
        stats, state = sifting.stats, trainer.state
        print(
            f"[rank {rank}] global_step={state.global_step} epoch={state.epoch:.2f} "
            f"steps={stats.steps} seen={stats.samples_seen} kept={stats.samples_kept} "
            f"trained={stats.samples_trained} epochs={stats.epochs} "
            f"lr={trainer.lr_scheduler.get_last_lr()[0]:.2e} keep_rate={stats.keep_rate:.3f}",
            flush=True,
        )
    if dist.is_initialized():
        # Free DDP (its reducer holds the process group) first: gloo threads that outlive the
        # interpreter can abort the process at exit.
        del trainer
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
