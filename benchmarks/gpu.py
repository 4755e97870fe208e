"""GPU benchmark and CUDA checks: a larger model, bf16 scoring, refined batches on the device.

One script for a machine with a CUDA GPU. It trains a byte-level transformer language model
over the Python standard library's source, plain and sifted, with the training step and the
scoring pass under bf16 autocast; the sifting loader moves every raw batch to the GPU once
and builds the refined batches there. It first checks, on the device:

- refined batches are on the GPU, full-sized but for the last, and hold exactly the kept
  samples, each one once, unchanged (every window carries its index);
- the counters add up (seen = kept + sifted; kept = trained + buffered + dropped);
- bf16 scoring ranks the samples like fp32 scoring (Spearman correlation);
- scoring leaves the model untouched;
- loss reuse (``ss.ScoreTable`` fed with the training step's bf16 losses on the device,
  ``ss.ReuseSampler`` at keep 0.5 with ``rescale``): the weights come back on the device, and
  an epoch after the first trains exactly the samples the sampler kept or passed, once each;

then times whole epochs (``torch.cuda.synchronize`` around each), runs ``smartsift.profile``
on the same setting and prints one table: per-epoch speedup, F/T, keep, the ideal
``1 / (F/T + k)``, the efficiency and the profiler's prediction; and loss reuse's per-epoch
speedup against its ideal ``1 / k``.

Without a GPU, ``--smoke`` runs the tiny setting on the CPU to check the script itself and
exits cleanly; the full run needs a GPU. Usage, from the repository root: ``python -m
benchmarks.gpu [--smoke]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from benchmarks import charlm
from benchmarks.common import Section, machine, markdown_table
from benchmarks.harness import seeded
from smartsift.modes.scoring import score

__all__ = ["Setting", "measure", "run"]


@dataclass(frozen=True)
class Setting:
    """The model and data of one run of this script."""

    corpus_bytes: int = 2_000_000
    context: int = 256
    dim: int = 384
    layers: int = 6
    heads: int = 6
    batch_size: int = 64
    epochs: int = 2
    beta: float = 1.0

    @classmethod
    def smoke(cls) -> Setting:
        return cls(
            corpus_bytes=6_000, context=32, dim=32, layers=1, heads=2, batch_size=16, epochs=1
        )


def _loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    windows, _ = batch
    x, y = windows[:, :-1], windows[:, 1:]
    logits = model(x).float()
    loss = F.cross_entropy(logits.reshape(-1, charlm.VOCAB), y.reshape(-1), reduction="none")
    return loss.view(y.shape).mean(1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def measure(setting: Setting, device: torch.device) -> dict[str, Any]:
    """Runs the checks and the timings; returns the figures (raises on a failed check)."""
    text, _ = charlm.corpus(setting.corpus_bytes)
    windows = charlm.make_windows(text, setting.context)
    index = torch.arange(len(windows))
    data = TensorDataset(windows, index)
    model = seeded(
        lambda: charlm.CharTransformer(setting.context, setting.dim, setting.layers, setting.heads),
        0,
    )
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    amp = torch.bfloat16
    policy = ss.RelativeProbabilistic(beta=setting.beta, history=1000)

    def raw_loader(seed: int) -> DataLoader:
        return DataLoader(
            data,
            batch_size=setting.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=device.type == "cuda",
        )

    def train_step(batch: Any) -> None:
        with torch.autocast(device.type, dtype=amp):
            loss = _loss_fn(model, batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    checks: list[tuple[str, str]] = []

    # --- check: bf16 scoring ranks like fp32 scoring; scoring leaves the model as it was
    first = next(iter(raw_loader(0)))
    first = (first[0].to(device), first[1].to(device))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = score(model, _loss_fn, first, len(first[1]))
    bf16 = score(model, _loss_fn, first, len(first[1]), autocast_dtype=amp)
    rho = _spearman(fp32, bf16)
    if not torch.isfinite(bf16).all() or rho < 0.9:
        raise AssertionError(f"bf16 scoring disagrees with fp32: Spearman {rho:.3f}")
    checks.append(("bf16 vs fp32 scoring, Spearman", f"{rho:.4f}"))
    after = model.state_dict()
    if any(not torch.equal(v, after[k]) for k, v in before.items()):
        raise AssertionError("the scoring pass changed the model")
    checks.append(("scoring leaves the model unchanged", "yes"))

    # --- check: refined batches on the device hold exactly the kept samples, once each
    sifting = ss.SiftingDataLoader(
        raw_loader(1), model, _loss_fn, policy=policy, device=device, autocast_dtype=amp, seed=0
    )
    seen_idx: list[torch.Tensor] = []
    sizes: list[int] = []
    for batch in sifting:
        w, idx = batch
        if w.device.type != device.type or idx.device.type != device.type:
            raise AssertionError(f"a refined batch came out on {w.device}, not {device}")
        if not torch.equal(w, windows[idx.cpu()].to(device)):
            raise AssertionError("a refined batch does not hold its samples' own data")
        seen_idx.append(idx.cpu())
        sizes.append(len(idx))
        train_step(batch)
    stats = sifting.stats
    all_idx = torch.cat(seen_idx)
    if len(all_idx.unique()) != len(all_idx):
        raise AssertionError("a sample came out twice in one epoch")
    if any(s != setting.batch_size for s in sizes[:-1]) or sizes[-1] > setting.batch_size:
        raise AssertionError(f"refined batch sizes {sorted(set(sizes))}")
    if stats.samples_seen != stats.samples_kept + stats.samples_sifted:
        raise AssertionError(f"seen != kept + sifted: {stats}")
    if stats.samples_kept != stats.samples_trained + stats.samples_buffered + stats.samples_dropped:
        raise AssertionError(f"kept != trained + buffered + dropped: {stats}")
    if stats.samples_trained != len(all_idx):
        raise AssertionError("samples_trained does not match the samples yielded")
    checks.append(("refined batches on the device, exact samples, once each", "yes"))
    checks.append(("counters add up", "yes"))

    # --- timings: whole epochs, plain and sifted, interleaved
    plain_loader = raw_loader(2)
    sifted_loader = ss.SiftingDataLoader(
        raw_loader(3), model, _loss_fn, policy=policy, device=device, autocast_dtype=amp, seed=1
    )

    def plain_epoch() -> float:
        _sync(device)
        start = time.perf_counter()
        for w, idx in plain_loader:
            train_step((w.to(device, non_blocking=True), idx.to(device, non_blocking=True)))
        _sync(device)
        return time.perf_counter() - start

    def sifted_epoch() -> float:
        _sync(device)
        start = time.perf_counter()
        for batch in sifted_loader:
            train_step(batch)
        _sync(device)
        return time.perf_counter() - start

    plain_t, sifted_t, keeps = [], [], []
    for _ in range(setting.epochs):
        plain_t.append(plain_epoch())
        before_stats = sifted_loader.stats
        sifted_t.append(sifted_epoch())
        after_stats = sifted_loader.stats
        keeps.append(
            (after_stats.samples_kept - before_stats.samples_kept)
            / max(1, after_stats.samples_seen - before_stats.samples_seen)
        )

    reuse = _reuse(data, setting, device, model, optimizer, plain_epoch)
    checks.append(("loss reuse: weights on the device, each kept sample trained once", "yes"))

    # --- the profiler on the same setting (bf16 scoring, bf16 training step)
    def profiled_step(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp):
            return _loss_fn(m, batch).mean()

    report = ss.profile(
        model,
        raw_loader(4),
        _loss_fn,
        optimizer,
        steps=10 if setting.corpus_bytes > 100_000 else 3,
        warmup=3 if setting.corpus_bytes > 100_000 else 1,
        train_step=profiled_step,
        device=device,
        policy=policy,
        autocast_dtype=amp,
    )
    k = statistics.median(keeps)
    f_over_t = report.scoring_s / report.step_s
    ideal = 1.0 / (f_over_t + k)
    measured = statistics.median(p / s for p, s in zip(plain_t, sifted_t, strict=True))
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "setting": setting,
        "windows": len(windows),
        "checks": checks,
        "plain_s": statistics.median(plain_t),
        "sifted_s": statistics.median(sifted_t),
        "keep": k,
        "f_over_t": f_over_t,
        "ideal": ideal,
        "measured": measured,
        "efficiency": measured / ideal,
        "predicted": report.predicted_speedup(k),
        "report": report,
        **reuse,
    }


def _reuse(
    data: TensorDataset,
    setting: Setting,
    device: torch.device,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plain_epoch: Any,
) -> dict[str, float]:
    """Checks loss reuse on the device, then times its epochs against plain ones."""
    table = ss.ScoreTable(len(data))
    sampler = ss.ReuseSampler(
        torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(5)),
        table,
        ss.RelativeProbabilistic(keep=0.5),
        max_age=None,
        rescale=True,
    )
    loader = DataLoader(
        ss.IndexedDataset(data), batch_size=setting.batch_size, sampler=sampler,
        pin_memory=device.type == "cuda",
    )  # fmt: skip

    def epoch(check: bool) -> float:
        _sync(device)
        start = time.perf_counter()
        trained = []
        for ids, w, idx in loader:
            batch = (w.to(device, non_blocking=True), idx.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=torch.bfloat16):
                per_sample = _loss_fn(model, batch)
            table.update(ids, per_sample)
            weights = sampler.weights(ids.to(device))
            if check and weights.device.type != device.type:
                raise AssertionError(f"reuse weights came back on {weights.device}")
            optimizer.zero_grad(set_to_none=True)
            (per_sample * weights).mean().backward()
            optimizer.step()
            trained.append(ids)
        _sync(device)
        seconds = time.perf_counter() - start
        if check:
            got = torch.cat(trained)
            stats = sampler.stats
            if stats is None or len(got.unique()) != len(got) or len(got) != stats.trained:
                raise AssertionError(f"a reuse epoch trained {len(got)} samples, stats {stats}")
        return seconds

    epoch(check=True)  # epoch 0: nothing scored, everything trained
    plain_t, reuse_t, keeps = [], [], []
    for _ in range(setting.epochs):
        plain_t.append(plain_epoch())
        reuse_t.append(epoch(check=True))
        keeps.append(sampler.stats.keep_rate if sampler.stats is not None else 1.0)
    k = statistics.median(keeps)
    measured = statistics.median(p / r for p, r in zip(plain_t, reuse_t, strict=True))
    return {
        "reuse_s": statistics.median(reuse_t),
        "reuse_keep": k,
        "reuse_measured": measured,
        "reuse_efficiency": measured * k,
    }


def _table(r: dict[str, Any]) -> str:
    s: Setting = r["setting"]
    rows = [[name, value] for name, value in r["checks"]]
    rows += [
        ["device", r["device"]],
        [
            "model",
            f"byte-level transformer, {s.layers} layers, width {s.dim}, context {s.context}",
        ],
        ["data", f"{r['windows']} windows, batch {s.batch_size}"],
        ["policy", f"RelativeProbabilistic(beta={s.beta:g}), bf16 autocast scoring"],
        ["plain epoch (s)", f"{r['plain_s']:.2f}"],
        ["sifted epoch (s)", f"{r['sifted_s']:.2f}"],
        ["keep k", f"{r['keep']:.3f}"],
        ["F/T (profiler)", f"{r['f_over_t']:.3f}"],
        ["ideal 1/(F/T+k)", f"{r['ideal']:.2f}x"],
        ["measured per-epoch speedup", f"{r['measured']:.2f}x"],
        ["efficiency", f"{r['efficiency']:.2f}"],
        ["profiler's predicted speedup at k", f"{r['predicted']:.2f}x"],
        ["loss reuse epoch (s), keep 0.5 stated", f"{r['reuse_s']:.2f}"],
        ["loss reuse: trained fraction k", f"{r['reuse_keep']:.3f}"],
        ["loss reuse: per-epoch speedup (ideal 1/k)", f"{r['reuse_measured']:.2f}x"],
        ["loss reuse: efficiency against 1/k", f"{r['reuse_efficiency']:.2f}"],
    ]
    return markdown_table(["check or figure", "value"], rows)


def run(smoke: bool = False) -> Section:
    """Runs on the GPU if there is one; returns the report's section."""
    title = "GPU: bf16 scoring, refined batches on the device"
    if torch.cuda.is_available():
        device = torch.device("cuda")
        result = measure(Setting.smoke() if smoke else Setting(), device)
        return Section(title, f"Machine: {machine()}.\n\n{_table(result)}")
    if smoke:
        result = measure(Setting.smoke(), torch.device("cpu"))
        note = "No GPU here: the tiny setting was run on the CPU to check the script."
        return Section(title, f"{note}\n\n{_table(result)}")
    return Section(
        title,
        "Not run: the machine that generated this report has no GPU. On a GPU machine, "
        "`python -m benchmarks.gpu` runs the checks and prints the section to put here.",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny setting; CPU if no GPU")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("No CUDA device: this benchmark needs a GPU (--smoke checks the script on CPU).")
        return 1
    print(run(args.smoke).markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
