"""The checkpoint format of both modes: versioned dicts of tensors and plain values.

Both modes' states carry one format version, :data:`VERSION`, under :data:`VERSION_KEY`, and
load with ``torch.load(..., weights_only=True)``; this release reads :data:`READABLE_VERSIONS`
and refuses others with :func:`check_version`. The loader's version 2 nests each part's own
state under a named key::

    {"version": 2, "config": {...}, "selector": {...}, "batcher": {...}, "cursor": {...},
     "raw_loader": ..., "stats": {...}, "comm": {...}, "audit": ...}

A loader's version-1 state (a flat dict) is converted by :func:`upgrade`. A
:class:`~smartsift.modes.reuse.ReuseSampler` state of version 1 has version 2's layout.

Example:
    >>> upgrade({"version": VERSION, CONFIG: {}})[VERSION_KEY]
    2
"""

from __future__ import annotations

import ast
from typing import Any

from smartsift.engine.checks import is_int

__all__ = [
    "AUDIT",
    "BATCHER",
    "COMM",
    "CONFIG",
    "CURSOR",
    "RAW_LOADER",
    "READABLE_VERSIONS",
    "SELECTOR",
    "STATS",
    "VERSION",
    "VERSION_KEY",
    "check_version",
    "describe_repr",
    "upgrade",
]

VERSION = 2
"""The state format version that both modes save."""
READABLE_VERSIONS = (1, VERSION)
"""The versions this release loads."""
VERSION_KEY = "version"
CONFIG = "config"
SELECTOR = "selector"
BATCHER = "batcher"
CURSOR = "cursor"
RAW_LOADER = "raw_loader"
STATS = "stats"
COMM = "comm"
AUDIT = "audit"

_V1_CURSOR = (
    "epoch",
    "in_epoch",
    "interrupted",
    "rounds_in_epoch",
    "rounds_total",
    "raw_in_epoch",
    "exhausted",
    "flushed",
    "seeded",
    "sampler_rng",
)


def describe_repr(text: str) -> dict[str, Any]:
    """Parses a policy's repr, as version 1 saved it, into ``Policy.describe()``'s form.

    Example:
        >>> describe_repr("RelativeProbabilistic(beta=1, history=500)")
        {'type': 'RelativeProbabilistic', 'fields': {'beta': 1, 'history': 500}}
    """
    try:
        call = ast.parse(text, mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            raise ValueError(text)
        values = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        return {"type": call.func.id, "fields": values}
    except (SyntaxError, ValueError):
        return {"type": text, "fields": {}}


def check_version(state: Any, what: str, fix: str) -> int:
    """The format version of ``state``, if it is one of :data:`READABLE_VERSIONS`.

    Args:
        state: a saved state (a dict with :data:`VERSION_KEY`).
        what: what the state should be, for the message ("smartsift loader").
        fix: what to pass instead, for the message.

    Raises:
        ValueError: naming the version found and the versions this release reads.

    Example:
        >>> check_version({"version": 1}, "ReuseSampler", "")
        1
        >>> check_version({"version": 3}, "ReuseSampler", "")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: This is not a ReuseSampler state ... (got version 3; ... versions 1 and 2).
    """
    version = state.get(VERSION_KEY) if isinstance(state, dict) else None
    if not is_int(version) or version not in READABLE_VERSIONS:
        *older, newest = READABLE_VERSIONS
        readable = f"{', '.join(map(str, older))} and {newest}" if older else str(newest)
        raise ValueError(
            f"This is not a {what} state of a known version (got version {version!r}; this "
            f"release reads versions {readable}). {fix}".rstrip()
        )
    return int(version)


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Returns ``state`` in the current format, converting a version-1 state.

    Raises:
        ValueError: for a state that is no smartsift loader state, or of a newer version.
    """
    version = check_version(
        state,
        "smartsift loader",
        "Pass the dict that SiftingDataLoader.state_dict() returned; a state saved by a newer "
        "smartsift needs that release to load.",
    )
    if version == VERSION:
        return state
    try:
        return _from_v1(state)
    except KeyError as err:
        raise ValueError(
            f"This version-1 smartsift state lacks the entry {err}; pass the whole dict that "
            "SiftingDataLoader.state_dict() returned."
        ) from None


def _from_v1(state: dict[str, Any]) -> dict[str, Any]:
    return {
        VERSION_KEY: VERSION,
        CONFIG: {"world_size": state["world_size"], "rank": state["rank"]},
        SELECTOR: {
            "policy": describe_repr(state["policy"]),
            "generator": state["generator"],
            "history": state["history"],
        },
        BATCHER: {
            "batch_size": state["batch_size"],
            "buffer": state["buffer"],
            "buffer_sizes": state["buffer_sizes"],
            "ready": state["ready"],
            "types": None,
        },
        CURSOR: {
            **{key: state[key] for key in _V1_CURSOR if key in state},
            # Not saved by version 1; only "none yet" matters (the empty-epoch warning).
            "steps_in_epoch": state["stats"]["counts"]["steps"] if state["in_epoch"] else 0,
        },
        RAW_LOADER: state["raw_loader"],
        STATS: state["stats"],
        COMM: {"capacity": state["capacity"], "seconds": state["stats"]["times"].get("comm_s", 0)},
        AUDIT: state.get("audit"),
    }
