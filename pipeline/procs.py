"""Child processes that never outlive the process that started them.

A helper server (Prefect's API, MLflow's UI) runs in its own session, so a Ctrl-C meant for the
pipeline does not reach it half-way through a stage; on Linux it also gets a parent-death signal, so a
SIGKILLed parent takes it down too. `stop` ends its whole process group (servers fork workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Start ``cmd`` in a new session that is terminated when this process dies, however it dies."""
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after ``timeout_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def terminate_on_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into a clean exit that runs ``on_signal`` first, so services this
    process started are stopped instead of left serving with parent pid 1."""

    def handler(signum: int, _frame: Any) -> None:
        on_signal()
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
