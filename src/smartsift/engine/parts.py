"""The stateful parts of one sifting loader, built, saved and restored together.

A :class:`~smartsift.SiftingDataLoader` runs a :class:`~smartsift.engine.selector.Selector`, a
:class:`~smartsift.engine.batcher.RefinedBatcher`, an
:class:`~smartsift.engine.cursor.EpochCursor` and a :class:`~smartsift.engine.ledger.Ledger`.
:class:`Parts` builds the four alike for a fresh loader and for a resumed one, and nests their
states (with the wrapped loader's, the collectives' and the audit's) under the keys of
:mod:`smartsift.engine.checkpoint`.

Example:
    >>> import smartsift as ss
    >>> parts = Parts.build(ss.TopK(0.5), "raise", seed=0, batch_size=8, padding=None, audit=None)
    >>> parts.batcher.batch_size, parts.cursor.epoch
    (8, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from smartsift.batches.structure import to_device
from smartsift.engine import checkpoint as ckpt
from smartsift.engine.audit import SiftAudit
from smartsift.engine.batcher import Joiner, RefinedBatcher
from smartsift.engine.cursor import EpochCursor, is_stateful
from smartsift.engine.distributed import Lockstep, RankInfo
from smartsift.engine.ledger import Ledger
from smartsift.engine.selector import Selector
from smartsift.policies.base import Policy

__all__ = ["Parts"]


@dataclass
class Parts:
    """A loader's selector, batcher, cursor and ledger."""

    selector: Selector
    batcher: RefinedBatcher
    cursor: EpochCursor
    ledger: Ledger

    @classmethod
    def build(
        cls,
        policy: Policy,
        nonfinite: str,
        seed: int,
        batch_size: int | None,
        padding: Joiner | None,
        audit: SiftAudit | None,
    ) -> Parts:
        """Fresh parts for a loader of these settings."""
        return cls(
            Selector(policy, nonfinite, seed),
            RefinedBatcher(batch_size, padding),
            EpochCursor(),
            Ledger(audit),
        )

    def state_dict(
        self, dataloader: Any, ranks: RankInfo, lockstep: Lockstep, audit: SiftAudit | None
    ) -> dict[str, Any]:
        """The loader's whole state: tensors and plain values (see ``checkpoint``)."""
        return {
            ckpt.VERSION_KEY: ckpt.VERSION,
            ckpt.CONFIG: {"world_size": ranks.world_size, "rank": ranks.rank},
            ckpt.SELECTOR: self.selector.state_dict(),
            ckpt.BATCHER: self.batcher.state_dict(),
            ckpt.CURSOR: self.cursor.state_dict(dataloader),
            ckpt.RAW_LOADER: dataloader.state_dict() if is_stateful(dataloader) else None,
            ckpt.STATS: self.ledger.state_dict(),
            ckpt.COMM: {"capacity": lockstep.capacity, "seconds": lockstep.seconds},
            ckpt.AUDIT: audit.state_dict() if audit is not None else None,
        }

    def load_state_dict(
        self,
        state: dict[str, Any],
        dataloader: Any,
        ranks: RankInfo,
        lockstep: Lockstep,
        device: torch.device | None,
    ) -> None:
        """Restores :meth:`state_dict`'s output into these fresh parts (and the wrapped loader,
        the collectives and the audit).

        Raises:
            ValueError: if the state was saved with another policy or world size, or is not a
                smartsift state.
        """
        state = ckpt.upgrade(state)
        saved_world = state[ckpt.CONFIG]["world_size"]
        if saved_world != ranks.world_size:
            raise ValueError(
                f"The state was saved by a job of {saved_world} ranks but this one has "
                f"{ranks.world_size}. Resuming on another world size is not supported: "
                "resume with the same number of ranks, each loading its own rank's state."
            )
        self.selector.load_state_dict(state[ckpt.SELECTOR])  # refuses another policy first
        self.batcher.load_state_dict(
            state[ckpt.BATCHER], (lambda b: to_device(b, device)) if device else (lambda b: b)
        )
        self.ledger.load_state_dict(state[ckpt.STATS])
        audit = self.ledger.audit
        if audit is not None and state.get(ckpt.AUDIT) is not None:
            audit.load_state_dict(state[ckpt.AUDIT])
        if state[ckpt.RAW_LOADER] is not None and is_stateful(dataloader):
            dataloader.load_state_dict(state[ckpt.RAW_LOADER])
            saved = state[ckpt.CURSOR]
            if saved["in_epoch"] and saved["interrupted"] and not saved["exhausted"]:
                # Its next iter() would finish the saved epoch, where the live loader's starts a
                # new one: let that iterator go unused.
                iter(dataloader)
        self.cursor.load_state_dict(state[ckpt.CURSOR], dataloader)
        lockstep.capacity = int(state[ckpt.COMM]["capacity"])
        lockstep.seconds = float(state[ckpt.COMM].get("seconds", 0.0))
