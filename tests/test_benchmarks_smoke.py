"""Every benchmark runs in its tiny smoke setting and returns a report section.

These keep the benchmarks working; they time nothing and assert no speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import common, run
from benchmarks.common import Section, Target

ROOT = Path(__file__).resolve().parents[1]


def test_common_helpers() -> None:
    assert common.markdown_table(["a"], [[1]]).splitlines() == ["| a |", "|---|", "| 1 |"]
    assert common.median_spread([1.0, 5.0, 2.0]) == (2.0, 1.0, 5.0)
    assert common.fmt_ratio([1.0, 2.0, 3.0]) == "2.00x (1.00x–3.00x)"
    assert common.fmt_spread([float("inf")], "{:.1f}") == "never"
    assert "PyTorch" in common.machine()


def test_section_renders_title_body_and_targets() -> None:
    section = Section(
        "Speed",
        "| a |\n|---|\n| 1 |",
        (Target("x", "at least 2x", "3x", met=True), Target("y", "at least 1", "0", met=False)),
    )
    text = section.markdown()
    assert text.startswith("## Speed\n\n| a |")
    assert text.endswith(
        "- x: at least 2x; measured 3x (met).\n- y: at least 1; measured 0 (not met)."
    )


def _targets_are_checked(section: Section, count: int) -> None:
    assert len(section.targets) == count
    for target in section.targets:
        assert isinstance(target.met, bool) and target.goal and target.measured
        assert str(target) in section.markdown()


def test_machinery_smoke() -> None:
    from benchmarks import machinery

    section = machinery.run(smoke=True)
    assert "| 10,000 |" in section.body and "samples/s" in section.body
    _targets_are_checked(section, 3)
    # Kept working for the engine's own timing: samples per second through the internals.
    assert machinery.internals_rate(500, 4) > 0


def test_efficiency_smoke() -> None:
    from benchmarks import efficiency

    section = efficiency.run(smoke=True)
    text = section.body
    assert "ideal 1/(F/T+k)" in text and "Profiler against measurement" in text
    tables = [t for t in text.split("\n\n") if t.startswith("| case |")]
    assert len(tables) == 2  # efficiency, then the profiler's verdicts checked
    profiler_rows = tables[1].splitlines()[2:]
    assert profiler_rows
    for row in profiler_rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] in ("sift", "don't sift")
        assert 0 < float(cells[4]) <= 0.5  # the keep checked: recommended, or 0.25
        assert cells[6].endswith("x") and cells[8] in ("yes", "**no**")
    assert "| reuse case |" in text  # the loss-reuse cases, against 1/k
    # The scoring pass against 1/(F/T+k); loss reuse against 1/k; loss reuse's realised keep.
    _targets_are_checked(section, 3)


def test_frontier_smoke(tmp_path: Path) -> None:
    from benchmarks import frontier

    section = frontier.run(smoke=True, img_dir=tmp_path)
    body = section.body
    arms = (*frontier.policies(100), frontier.AUTO_HELD_OUT, *frontier.reuse_arms(100))
    arms = (*arms, frontier.UNIFORM)
    for name in (*arms, "plain, 1/2 epochs (0.50x)", frontier.REPLICATE):
        assert f"| {name} |" in body
    for bench in frontier.BENCHES.values():
        assert f"### {bench.title}" in body and "F/T = " in body
    assert body.count("above the frontier at its work") == len(frontier.BENCHES)
    assert body.count("Sifting ") >= len(frontier.BENCHES)  # a verdict per task
    assert body.count("Loss reuse (no scoring pass") == len(frontier.BENCHES)
    # A task running a subset of the arms shows only those (and no Uniform control).
    long = body.split(f"### {frontier.BENCHES['charlm_long'].title}")[1].split("### ")[0]
    assert f"| {frontier.UNIFORM} |" not in long and "| TopK(0.5) |" not in long
    # Reference, best policy and loss reuse on MNIST-1D, the frontier on two tasks, saturation
    # on one, and a stated keep realised on every task.
    # Auto against plain, and against the best fixed policy, on every task.
    _targets_are_checked(section, 6 + 3 * len(frontier.BENCHES))
    autos = [t for t in section.targets if ", Auto: time to the plain run's" in t.name]
    assert len(autos) == len(frontier.BENCHES)
    assert all("with a held-out metric" in t.measured for t in autos)
    assert all("plain itself in another data order" in t.measured for t in autos)
    assert f"| {frontier.REPLICATE} |" in body and "(a replicate)" in body
    keeps = [t for t in section.targets if "stated keep is realised" in t.name]
    assert len(keeps) == len(frontier.BENCHES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"frontier_{key}.png" for key in frontier.BENCHES
    )


def test_frontier_helpers() -> None:
    from benchmarks import frontier
    from benchmarks.harness import RunResult

    points = [(1.0, 0.5), (2.0, 0.7), (4.0, 0.8)]
    assert frontier.frontier_at(points, 3.0) == pytest.approx(0.75)
    assert frontier.frontier_at(points, 9.0) == 0.8
    run = RunResult("sifted", scored=[100, 200], trained=[50, 100])
    assert frontier.work_curve(run, 0.5, 100) == [1.0, 2.0]
    assert frontier.stated_keep("Reuse: RelativeProbabilistic(keep=0.3)") == 0.3
    assert frontier.stated_keep("TopK(0.5)") is None
    train, _ = frontier.redundant_mnist1d(40, 0.75, prototypes_per_class=1, num_samples=600)
    x, y = train.tensors
    assert len(train) == 160 and len(torch.unique(x, dim=0)) == 160  # copies, not clones
    assert len(set(y.tolist())) == 10


def test_schedules_smoke(tmp_path: Path) -> None:
    from benchmarks import schedules

    section = schedules.run(smoke=True, img_dir=tmp_path)
    rows = {
        cells[0]: cells
        for line in section.body.splitlines()
        if line.startswith("| ") and not line.startswith("| run")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows[schedules.PLAIN][3] == rows[schedules.FOLLOWS][3] == "0"
    assert float(rows[schedules.NAIVE][3]) > 0  # stepped per optimizer step: unfinished
    _targets_are_checked(section, 1)
    assert section.targets[0].met
    assert [p.name for p in tmp_path.iterdir()] == [schedules.IMAGE]


def test_gpu_smoke() -> None:
    from benchmarks import gpu

    body = gpu.run(smoke=True).body
    assert "counters add up | yes" in body
    assert "loss reuse: weights on the device, each kept sample trained once | yes" in body
    trained = next(line for line in body.splitlines() if "trained fraction k" in line)
    assert 0.3 < float(trained.strip("| ").split("|")[-1]) < 0.8  # keep 0.5 plus the passed


def test_run_only_renders_its_section_and_keeps_the_others(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    kept = run._block("gpu", Section("GPU", "As it was.", (Target("g", "1", "2", True),)), 6, False)
    out.write_text(run.render({"gpu": kept}, smoke=False))
    assert run.main(["--smoke", "--only", "machinery", "--out", str(out)]) == 0
    doc = out.read_text()
    assert kept in doc  # the section not rerun, as it was
    assert "<!-- benchmark:machinery -->\n## Machinery" in doc and "Machine:" in doc
    assert "python -m benchmarks.machinery --smoke" in doc
    summary = doc.split("## Targets\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(": ", 1)[0] for line in summary] == ["- **machinery**"] * 3 + ["- **gpu**"]
    assert summary[-1] == "- **gpu**: g: 1; measured 2 (met)."
    found = re.search(r"<!-- targets (\[.*\]) -->", doc)
    assert found is not None
    assert tuple(Target(**t) for t in json.loads(found.group(1))) == run._recorded_targets(doc)


def test_a_failing_benchmark_is_reported_not_raised() -> None:
    section, _, ok = run.run_one("no_such_benchmark", smoke=True)
    assert not ok and "This benchmark failed" in section.body
    doc = run.render({"gpu": run._block("gpu", section, 0.0, True)}, smoke=True)
    assert "This benchmark failed" in doc and "(no targets reported)" in doc


def test_targets_with_double_hyphens_survive_the_comment() -> None:
    target = Target("a--b", "--> c", "d", met=False)
    block = run._block("gpu", Section("t", "b", (target,)), 0.0, False)
    comment = block.split("<!-- targets ", 1)[1].split(" -->", 1)[0]
    assert "--" not in comment
    assert run._recorded_targets(block) == (target,)


def test_python_dash_m_runs_a_benchmark_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and "--only" in done.stdout


def test_a_kept_section_from_an_older_report_asks_to_be_rerun() -> None:
    old = "<!-- benchmark:gpu -->\n## GPU\n\nTarget: x.\n<!-- /benchmark:gpu -->\n"
    assert run._summary({"gpu": old}) == "- **gpu**: targets not recorded; rerun this benchmark."


def test_a_smoke_run_leaves_the_report_s_figures_alone(tmp_path: Path) -> None:
    from benchmarks.common import IMG_DIR

    before = {p.name: p.stat().st_mtime_ns for p in IMG_DIR.glob("*.png")}
    assert run.main(["--smoke", "--only", "schedules", "--out", str(tmp_path / "b.md")]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in IMG_DIR.glob("*.png")}
    assert after == before
    assert "## " in (tmp_path / "b.md").read_text()
