"""Spawns real multi-process ``torch.distributed`` jobs (gloo, CPU) for tests, with a hard timeout.

Each rank is a fresh ``spawn``-ed process that joins a gloo process group on a free local port,
runs ``fn(rank, world_size, *args)`` and sends back what it returns (anything picklable). A job
that does not finish within ``timeout`` seconds is killed and reported as a hang, so a deadlock
fails the test instead of blocking CI; a rank that fails is reported with its traceback.

Example:
    >>> def fn(rank, world_size):  # must be importable (module level) in real use
    ...     return rank
    >>> run_ranks(fn, 2)  # doctest: +SKIP
    [0, 1]
"""

from __future__ import annotations

import datetime
import gc
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["DDPJobError", "free_port", "run_ranks", "run_session"]

_GRACE_S = 5.0  # how long the other ranks may run on after one rank failed


class DDPJobError(AssertionError):
    """A spawned job hung (ran past its timeout) or one of its ranks failed."""


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    out: str,
    args: tuple[Any, ...],
    pg_timeout_s: float,
) -> None:
    """Runs in a spawned rank: join the group, run ``fn``, write its result (or traceback)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    path = Path(out) / f"rank{rank}.pkl"
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=pg_timeout_s),
        )
        try:
            result = fn(rank, world_size, *args)
        finally:
            # Free what still holds the group (a DDP reducer in a reference cycle) first: gloo
            # threads that outlive the interpreter can abort the process at exit.
            gc.collect()
            dist.destroy_process_group()
        path.write_bytes(pickle.dumps(("ok", result)))
    except BaseException:
        path.write_bytes(pickle.dumps(("error", traceback.format_exc())))
        raise


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 45.0,
) -> list[Any]:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` spawned gloo ranks.

    Args:
        fn: a module-level (importable) function; its return value must be picklable.
        world_size: the number of ranks (processes).
        *args: picklable arguments passed to every rank.
        timeout: seconds the whole job may take, process start-up included.

    Returns:
        The ranks' return values, in rank order.

    Raises:
        DDPJobError: if the job ran past ``timeout`` (its processes are killed) or a rank
            raised or died; the message holds every failed rank's traceback.
    """
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="smartsift-ddp-") as out:
        procs = [
            ctx.Process(
                target=_entry,
                args=(fn, rank, world_size, port, out, args, timeout),
                name=f"smartsift-rank{rank}",
                daemon=True,
            )
            for rank in range(world_size)
        ]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        failed_at: float | None = None
        while any(p.is_alive() for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now > failed_at + _GRACE_S):
                break
            time.sleep(0.02)
        hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        results: list[Any] = []
        errors: list[str] = []
        for rank, proc in enumerate(procs):
            path = Path(out) / f"rank{rank}.pkl"
            if path.exists():
                status, value = pickle.loads(path.read_bytes())
            else:
                status, value = "error", f"no result (exit code {proc.exitcode})"
            if status == "ok":
                results.append(value)
            elif rank not in hung:
                errors.append(f"--- rank {rank} ---\n{value}")
    if hung:
        raise DDPJobError(
            f"rank(s) {hung} of {world_size} were still running after {timeout:.0f} s (a hang?) "
            "and were killed.\n" + "\n".join(errors)
        )
    if errors:
        raise DDPJobError("rank(s) failed:\n" + "\n".join(errors))
    return results


def torchrun_copied(
    script: Path, tmp_path: Path, args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Copies ``script`` into ``tmp_path`` and runs it there under torchrun on 2 CPU ranks.

    Nothing from the repository's tree leaks in (``PYTHONPATH`` removed): smartsift comes from
    the installed package. Skips when torchrun is missing; a run past ``timeout`` fails.
    """
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    copied = shutil.copy(script, tmp_path)
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(copied),
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun ran past {timeout} s (a hang?): {err.stdout!r} {err.stderr!r}")


def run_session(
    cmd: list[str], env: dict[str, str], timeout: float, what: str, cwd: Path | None = None
) -> tuple[int, str]:
    """Runs ``cmd`` in a session of its own and returns its exit code and output (stdout and
    stderr together); past ``timeout`` the whole session (torchrun and every rank it started)
    is killed and the test fails, naming ``what`` ran past it."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{what} ran past {timeout} s (a hang?): {out}")
    return proc.returncode, out
