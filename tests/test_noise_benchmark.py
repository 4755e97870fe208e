"""The noisy-labels benchmark (``benchmarks/noise.py``) runs in its smoke setting.

It times nothing and asserts no speed: only that the section, its table, its figure and the
mislabeled share it counts are there and consistent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mnist1d")

from benchmarks import noise


def test_flip_labels_flips_the_stated_share_to_other_classes() -> None:
    labels = torch.arange(1000) % 10
    flipped_labels, flipped = noise.flip_labels(labels, 0.2, 10, seed=3)
    assert int(flipped.sum()) == 200
    assert bool((flipped_labels[flipped] != labels[flipped]).all())
    assert torch.equal(flipped_labels[~flipped], labels[~flipped])
    again, _ = noise.flip_labels(labels, 0.2, 10, seed=3)
    assert torch.equal(again, flipped_labels)


def test_smoke_run_returns_a_section_with_every_arm(tmp_path: Path) -> None:
    section = noise.run(smoke=True, img_dir=tmp_path)
    text = section.markdown()
    for name in noise.arms(100):
        assert f"| {name} |" in text
    assert "| plain | " in text and "| 20.0 % |" in text  # plain trains on the set's share
    assert (tmp_path / noise.IMAGE).is_file()
    assert len(section.targets) == 1 and section.targets[0].name.startswith("A guard")
