"""Tests of the command lines: ``smartsift profile`` on a tiny target, and a smoke run of the
demo's (``python -m benchmarks.demo``, which ``make demo`` runs; not part of the package)."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import demo
from smartsift.cli import main

ROOT = Path(__file__).resolve().parents[1]

TARGET = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset


    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="none")


    def build():
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(128, 8), torch.randint(0, 2, (128,)))
        model = torch.nn.Linear(8, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return model, DataLoader(data, batch_size=16), loss_fn, optimizer


    def not_four():
        return 1, 2


    def three():
        return build()[:3]
    """
)


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tiny_target.py"
    path.write_text(TARGET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def test_profile_on_a_module_target(target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--target", "tiny_target:build", "--steps", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "profiling tiny_target:build" in out
    assert "scoring pass" in out and "break-even keep" in out
    assert "sift" in out.lower()


def test_profile_on_a_file_target_as_json(target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--target", f"{target}:build", "--steps", "2", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["steps"] == 2 and figures["batch_size"] == 16
    assert isinstance(figures["recommended"], bool) and figures["recommendation"]
    assert figures["speedup_keep_1.00"] < 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "module:function"),
        ("tiny_target:missing", "no function"),
        ("no_such_module_xyz:build", "cannot import"),
        ("tiny_target:not_four", "must return"),
        ("/no/such/file.py:build", "no file"),
    ],
)
def test_profile_bad_targets(
    target: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    assert main(["profile", "--target", spec]) == 2
    assert message in capsys.readouterr().err


def test_profile_target_of_the_wrong_shape_says_what_it_returned(
    target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "--target", "tiny_target:three"]) == 2
    err = capsys.readouterr().err
    assert "must return a tuple of 4: (model, dataloader, loss_fn, optimizer)" in err
    assert "it returned a tuple of 3: (Linear, DataLoader, function)" in err


def test_profile_rejects_bad_steps(target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--target", "tiny_target:build", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_profile_passes_num_classes(target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--target", "tiny_target:build", "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chance_loss"] is None  # NaN: not given
    argv = ["profile", "--target", "tiny_target:build", "--steps", "2", "--num-classes", "2"]
    assert main([*argv, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["chance_loss"] == pytest.approx(math.log(2))
    # A fresh binary classifier's loss is near log 2: the report says it is too early.
    assert main(argv) == 0
    assert "chance level" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["1", "0", "-3"])
def test_profile_rejects_too_few_classes(
    target: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    argv = ["profile", "--target", "tiny_target:build", "--num-classes", value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--num-classes must be an int of at least 2" in err and f"got {value}" in err


def test_profile_help_shows_num_classes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    assert "--num-classes N" in capsys.readouterr().out


def test_profile_with_epochs_advises_a_mode(
    target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["profile", "--target", "tiny_target:build", "--steps", "2", "--warmup", "1"]
    assert main(argv) == 0
    assert "Which mode" not in capsys.readouterr().out  # no epochs, no mode advice
    assert main([*argv, "--epochs", "8"]) == 0
    out = capsys.readouterr().out
    # The target's 128 samples are a map-style TensorDataset seen 8 times: loss reuse.
    assert "Which mode, over 8 epoch(s) at keep 0.30: reuse. Use loss reuse" in out
    assert "about 397 of 1,024 sample-steps" in out  # 128 x (1 + 7 x 0.3)
    assert main([*argv, "--epochs", "1", "--keep", "0.5", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert (figures["epochs"], figures["keep"], figures["dataset_size"]) == (1, 0.5, 128)
    assert figures["map_style"] is True and figures["mode"] in ("scoring", "none")
    assert "single epoch" in figures["mode_reason"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "--epochs must be an int of at least 1"),
        (["--keep", "0.5"], "--keep K needs --epochs N"),
        (["--epochs", "4", "--keep", "1.5"], "--keep must be a fraction in (0, 1], but got 1.5"),
        (["--epochs", "4", "--keep", "0"], "--keep must be a fraction in (0, 1]"),
    ],
)
def test_profile_rejects_bad_mode_options(
    target: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    assert main(["profile", "--target", "tiny_target:build", *options]) == 2
    assert message in capsys.readouterr().err


def test_profile_help_shows_epochs_and_keep(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    out = capsys.readouterr().out
    assert "--epochs N" in out and "--keep K" in out


def test_profile_requires_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "smartsift profile: error: --target MODULE:FUNCTION is required" in err
    assert "(model, dataloader, loss_fn, optimizer)" in err
    assert "--target benchmarks.demo:profile_target" in err  # where the demo model went


def test_profile_of_the_demo_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo's full setting generates 20 000 samples; its smoke setting is enough here.
    monkeypatch.setattr(demo, "profile_target", functools.partial(demo.profile_target, True))
    argv = ["profile", "--target", "benchmarks.demo:profile_target", "--steps", "2"]
    assert main([*argv, "--warmup", "1"]) == 0
    assert "profiling benchmarks.demo:profile_target" in capsys.readouterr().out


def test_the_demo_left_the_library_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "not part of the smartsift package" in err
    assert "make demo" in err and "python -m benchmarks.demo" in err


def test_demo_smoke_writes_plot_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plots" / "demo.png"
    assert demo.main(["--smoke", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    # Output that is not a terminal (here, captured) gets no progress bar to flood it.
    assert "4 runs" not in captured.err and "epoch" not in captured.err
    for row in (
        "training wall time",
        "optimizer steps",
        "samples backpropagated",
        "keep rate",
        "final test accuracy",
        "time to",
        "speedup",
    ):
        assert row in text
    assert f"plot: {out}" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cosine schedule following the data" in text  # the default schedule
    # The plain run trains on batches of the refined size, so both take steps of one size:
    # smoke data has 480 training samples, refined batches of 32, 2 epochs.
    steps = next(line for line in text.splitlines() if line.startswith("optimizer steps"))
    header = text.splitlines()[text.splitlines().index(steps) - 2]
    assert header.split() == ["plain", "sifted", "reuse", "plain,", "1/2", "epochs"]
    plain, sifted, reuse, control = map(int, steps.split()[2:])
    assert plain == 2 * 480 // 32 and control == 480 // 32
    # Loss reuse trains everything in its first epoch, then about half (keep 0.5).
    assert 480 // 32 < reuse < plain and sifted < plain
    assert "reuse: " in text and "against training less: loss reuse ended" in text
    assert "reuse: loss reuse at keep 0.5; control: plain for 1 epochs" in text


def test_demo_with_a_constant_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.png"
    assert demo.main(["--smoke", "--schedule", "none", "--out", str(out)]) == 0
    assert "constant rate" in capsys.readouterr().out


def test_demo_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--smoke", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert demo.main(["--smoke", "--reuse-keep", "1.5"]) == 2
    assert "--reuse-keep must be in (0, 1), but got 1.5" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "profile" in out and "demo" not in out


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "smartsift", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("smartsift ")


def test_the_demo_runs_from_the_repository_root_as_make_demo_does() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m benchmarks.demo")
    assert "--reuse-keep" in done.stdout and "--schedule" in done.stdout
