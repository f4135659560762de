"""Progress on the terminal for long loops, and quiet logs otherwise.

A loop reports through `Progress`: on a terminal it is a tqdm bar on stderr; when stderr is not a
terminal (a stage's output piped by DVC, CI logs, a terminal 0 columns wide) it prints one line every
``LINEAGE_PROGRESS_INTERVAL`` seconds (default 30) and a last one at the end, so a 10-minute
`dvc repro` of pretrain still shows step, loss, throughput and ETA. ``LINEAGE_PROGRESS=0`` turns both
off; ``LINEAGE_PROGRESS=bar`` or ``lines`` forces one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
VERBOSE_ENV = "LINEAGE_VERBOSE"


def mode() -> str:
    """``bar``, ``lines`` or ``off`` for this process."""
    want = os.environ.get("LINEAGE_PROGRESS", "").strip().lower()
    if want in ("0", "off", "false", "no"):
        return "off"
    if want in ("bar", "lines"):
        return want
    return "bar" if sys.stderr.isatty() and _columns() > 0 else "lines"


def _columns() -> int:
    """The terminal's width; 0 when it reports none (a pty opened by a program that never set its
    size, some CI consoles), where a bar would draw nothing at all: lines are printed instead."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LINEAGE_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


def _duration(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v / 1e3:.1f}k"
    return str(v)


class Progress:
    """``with Progress(total, desc, unit) as p: ... p.update(n, loss=...)``: a bar, periodic lines,
    or nothing (see the module doc). ``initial`` is where a resumed loop starts."""

    def __init__(
        self, total: int | None, desc: str, unit: str = "it", initial: int = 0, interval: float | None = None
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = _interval() if interval is None else interval
        self.n = initial
        self._start_n = initial
        self.mode = mode()
        self._bar: Any = None
        self._t0 = self._last = time.monotonic()
        self.postfix: dict[str, Any] = {}
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, dynamic_ncols=True,
                leave=True, mininterval=0.5,
            )  # fmt: skip

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self._last >= self.interval:
            self._line()

    def _line(self, final: bool = False) -> None:
        self._last = now = time.monotonic()
        elapsed = now - self._t0
        done = self.n - self._start_n
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        if final:
            parts.append(f"in {_duration(elapsed)}")
        elif self.total and done > 0:
            parts.append(f"ETA {_duration(elapsed / done * (self.total - self.n))}")
        print(", ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self.n > self._start_n and time.monotonic() - self._t0 >= self.interval:
            self._line(final=True)  # a loop shorter than one interval stays silent
        self.mode = "off"


class Phases:
    """A few long steps with no loop of their own (a stage's final evaluations): on a terminal a bar
    naming the step under way; otherwise one line as each step starts and one at the end, so a
    minute of evaluation is never a minute of silence.
    ``with Phases("ppo: final evaluation", 3) as ph: ph.next("greedy answers"); ...``"""

    def __init__(self, desc: str, total: int):
        self._p = Progress(total, desc, "parts", interval=0.0)
        self._started = False

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def next(self, name: str) -> None:
        """The previous step is done; ``name`` starts."""
        p = self._p
        if self._started:
            p.update(1, now=name)
        else:
            p.postfix["now"] = name
            if p._bar is not None:
                p._bar.set_postfix(now=name)
            elif p.mode == "lines":
                p._line()
        self._started = True

    def close(self) -> None:
        p = self._p
        if self._started and p.mode != "off":
            p.postfix.pop("now", None)
            rest = max(0, (p.total or 0) - p.n)
            if p._bar is not None:
                p._bar.set_postfix({}, refresh=False)
                p._bar.update(rest)
            p.n += rest
        p.close()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``for x in progress(items, "clean: shards")``: `Progress` around an iterable."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit) as p:
        for item in items:
            yield item
            p.update()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def muted(*loggers: str) -> Iterator[None]:
    """Silence ``loggers`` for the block: a library that logs an ERROR line and then raises (the
    caller turns the exception into one line of its own). ``LINEAGE_VERBOSE=1`` mutes nothing."""
    if verbose():
        yield
        return
    before = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def quiet_logs() -> None:
    """No deprecation or future warnings, no INFO chatter from libraries (MLflow, Prefect's client,
    transformers' shard writer): a stage prints its progress and its result. ``LINEAGE_VERBOSE=1``
    (`lineage run --verbose`) leaves everything on."""
    if verbose():
        return
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("mlflow", "alembic", "urllib3", "httpx", "transformers", "datasets", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # the kernel hub (loaded by transformers) warns that it cannot cache what a CPU run never uses
    logging.getLogger("kernels").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Writing model shards"
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ... at" lines
