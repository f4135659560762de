"""Prefect around the stages: each stage is a flow, work over shards is mapped tasks.

The task runner comes from ``common.task_runner``: threads on one machine (the data steps are
CPU-bound Python, so more than one thread only adds GIL contention: use ``processes`` to use
several cores), Dask or Ray to go past one machine, or ``sync`` (plain Python, no Prefect) as a
debugging aid and as the baseline that ``bench/orchestration.py`` measures the overhead against.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import CommonConfig
from pipeline.errors import LineageError

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",  # no analytics daemon from `dvc` in a project without core.analytics
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    # the UI the project's server serves: v1, which has no analytics client (v2 starts one even
    # with analytics off); PREFECT_SERVER_ANALYTICS_ENABLED keeps both UIs from sending events
    "PREFECT_SERVER_UI_V2_ENABLED": "false",
    "PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL": "WARNING",
    # flow-run lines ("Beginning flow run", "Finished in state") reach Prefect's log, not the
    # terminal: its console handler shows warnings only; `lineage run --verbose` shows everything
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "INFO",
}


def setup_env(common: CommonConfig, root: Path | None = None) -> None:
    """Telemetry off, offline hub access when asked, Prefect's home inside the project; must run
    before prefect/mlflow/datasets are imported."""
    from pipeline.progress import quiet_logs

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    quiet_logs()
    if root is not None:
        os.environ.setdefault("PREFECT_HOME", str(Path(root).resolve() / ".prefect"))
    if common.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def api_healthy(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_file(root: Path) -> Path:
    return Path(root) / ".prefect" / "server.json"


def shared_server(root: Path) -> str | None:
    """The API URL of a Prefect server this project already runs (`lineage run`, `lineage ui`)."""
    try:
        url = json.loads(_server_file(root).read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if api_healthy(url) else None


@contextlib.contextmanager
def prefect_server(
    root: Path, timeout_s: float = 90.0, port: int | None = None, announce: bool = True
) -> Iterator[str | None]:
    """Start a Prefect server for this project on loopback; yields its API URL, or None when it did
    not come up in time. It runs in its own session (a Ctrl-C for the pipeline does not kill it
    mid-stage), dies with this process even on SIGKILL, and is announced in .prefect/server.json
    so other processes of the project reuse it."""
    from pipeline import procs

    root = Path(root).resolve()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = root / ".prefect"
    home.mkdir(exist_ok=True)
    # the UI in the browser must call this server's API, whatever a user profile says
    env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(home), "PREFECT_UI_API_URL": url}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    with (home / "server.log").open("w") as log:
        proc = procs.spawn(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    announced = False
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None and not api_healthy(url):
            time.sleep(0.25)
        if api_healthy(url):
            if announce and shared_server(root) is None:
                _server_file(root).write_text(json.dumps({"url": url, "pid": proc.pid}) + "\n")
                announced = True
            yield url
        else:
            yield None
    finally:
        if announced:
            with contextlib.suppress(OSError):
                _server_file(root).unlink()
        procs.stop(proc)


@contextlib.contextmanager
def _use_api(url: str) -> Iterator[str]:
    """Point this process's Prefect client at ``url``, also when prefect was imported earlier (its
    settings are read once, so changing the environment alone would not reach it)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        _drain_prefect()
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def _drain_prefect() -> None:
    """Send queued flow-run logs and events now, while the server that takes them still runs."""
    if _LOST:
        return
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=5)


@contextlib.contextmanager
def prefect_api(root: Path, common: CommonConfig) -> Iterator[str | None]:
    """The Prefect API a stage talks to: the one in PREFECT_API_URL (`lineage run`), else the
    project's running server, else a server of the stage's own. When none answers, yields None and
    the stage runs its body without Prefect, saying so: a stage completes or fails on its own
    merits, never on the orchestrator's health."""
    if common.task_runner == "sync":
        yield None
        return
    url = os.environ.get("PREFECT_API_URL")
    if url and api_healthy(url, timeout_s=3.0):
        with _use_api(url):
            yield url
        return
    if url:
        print(f"prefect: no API answers at {url}; starting one for this stage", file=sys.stderr)
    url = shared_server(root)
    if url:
        with _use_api(url):
            yield url
        return
    # the stage's own server is not announced: it ends with the stage, so no other process may rely on it
    with prefect_server(root, timeout_s=60.0, announce=False) as url:
        if url is None:
            print(
                f"prefect: no server came up (see {root / '.prefect' / 'server.log'}); "
                "running the stage without Prefect",
                file=sys.stderr,
            )
            yield None
        else:
            with _use_api(url):
                yield url


def make_task_runner(common: CommonConfig) -> Any:
    if common.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=common.workers)
    if common.task_runner == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=common.workers)
    if common.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if common.dask_address:
            return DaskTaskRunner(address=common.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": common.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    if common.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise LineageError(
                "common.task_runner: 'ray' needs the prefect-ray package (pip install prefect-ray)"
            ) from None
        return RayTaskRunner(address=common.ray_address) if common.ray_address else RayTaskRunner()
    raise LineageError(f"common.task_runner: no runner for {common.task_runner!r}")


# ------------------------------------------------------------------------ losing the server mid-stage
_LOST: list[str] = []  # the API URL this process lost, once it has
CLIENT_RETRIES = 2  # Prefect's client retries a refused connection with a 2**n s backoff: 6 s, not 62


def server_lost(exc: BaseException | None = None) -> bool:
    """Whether this process's Prefect server stopped answering: said once on stderr, and Prefect
    stops sending it logs (no "Error logging to API" lines, no wait on exit). The stage goes on
    without orchestration, which only records what the stage does."""
    if _LOST:
        return True
    url = os.environ.get("PREFECT_API_URL", "")
    if not url or api_healthy(url, timeout_s=2.0):
        return False
    _LOST.append(url)
    why = f" ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})" if exc is not None else ""
    print(
        f"prefect: the server at {url} stopped answering{why}; the stage goes on without it "
        "(its flow run stays unfinished in Prefect's UI)",
        file=sys.stderr,
        flush=True,
    )
    import logging

    logging.raiseExceptions = False  # a log batch already queued fails without a message
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogHandler, APILogWorker

        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for h in list(getattr(logger, "handlers", [])):
                if isinstance(h, APILogHandler):
                    logger.removeHandler(h)
        for worker in (EventsWorker, APILogWorker):  # what they queued would be retried one by one on exit
            for service in list(worker._instances.values()):
                with contextlib.suppress(Exception):
                    while True:
                        service._queue.get_nowait()
                        service._queue.task_done()
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("prefect") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL + 1)
    return True


_SERVER_TROUBLE = ("Unable to connect", "failed to process item", "Still processing items", "ConnectError",
                   "Connection refused", "connection attempts failed")  # fmt: skip


def _quiet_when_lost(record: Any) -> bool:
    """A logging filter for Prefect's loggers: its complaints about a server that went away (the
    engine's traceback, the events client's retries) are replaced by `server_lost`'s one line."""
    if record.levelno < 30:
        return True
    text = record.getMessage() + (repr(record.exc_info[1]) if record.exc_info else "")
    return not (any(t in text for t in _SERVER_TROUBLE) and server_lost())


def _watch_server() -> None:
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.events.clients",
                 "prefect._internal.concurrency", "prefect.engine", "prefect", "EventsWorker"):  # fmt: skip
        logger = logging.getLogger(name)
        if _quiet_when_lost not in logger.filters:
            logger.addFilter(_quiet_when_lost)


class _Raised:
    """An exception from a task carried back as a value: Prefect then logs no traceback for it, and
    the stage reports it once, as one line, with the exception's own type."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _guarded_call(item: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return fn(item, *args)
    except Exception as e:
        return _Raised(e)


def flow_run_labels(stage: str, params: Any) -> tuple[dict[str, Any], list[str]]:
    """A stage's flow-run parameters (its params section and `common`, flattened) and tags."""
    from pipeline.config import flatten

    labels = [f"stage:{stage}"]
    for env, what in (("LINEAGE_PROFILE", "profile"), ("DVC_EXP_NAME", "exp")):
        if os.environ.get(env):
            labels.append(f"{what}:{os.environ[env]}")
    if params is None:
        return {}, labels
    parameters = {f"common.{k}": v for k, v in flatten(params.common.model_dump(mode="json")).items()}
    if hasattr(params, stage):
        section = getattr(params, stage).model_dump(mode="json")
        parameters.update({f"{stage}.{k}": v for k, v in flatten(section).items()})
        labels.append(f"params:{params.section_hash(stage)}")
    from pipeline.redact import redact_value

    return {k: redact_value(v) for k, v in parameters.items()}, labels


class _TeeToPrefect:
    """A text stream that writes through to the terminal's stream and sends each complete line to
    the flow run's log in Prefect (not to the terminal's log handlers): the UI shows the stage's
    output while the terminal shows exactly what it did before. A bar redrawn with carriage returns
    sends its last state only."""

    def __init__(self, stream: Any, logger: Any):
        self._stream, self._logger, self._buf = stream, logger, ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1].strip()
            if line:
                with contextlib.suppress(Exception):
                    self._logger.info(line)
        if len(self._buf) > 10_000:  # a bar that never ends its line: keep its latest state only
            self._buf = self._buf.rsplit("\r", 1)[-1][-10_000:]
        return n

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def flow_output_logger() -> Any:
    """A logger whose records go to the current flow run's log in Prefect's API only (the terminal's
    quiet settings do not apply to it, and it never prints)."""
    import logging

    from prefect import get_run_logger
    from prefect.logging.handlers import APILogHandler

    base = logging.getLogger("lineage.stage")
    if not any(isinstance(h, APILogHandler) for h in base.handlers):
        base.addHandler(APILogHandler())
        base.propagate = False
        base.setLevel(logging.INFO)
    return logging.LoggerAdapter(base, dict(get_run_logger().extra))


@contextlib.contextmanager
def output_to_prefect() -> Iterator[None]:
    """Inside a flow run: copy stdout and stderr lines to its Prefect log."""
    try:
        logger = flow_output_logger()
    except Exception:  # no flow run context: nothing to send to
        yield
        return
    import logging

    out, err = sys.stdout, sys.stderr
    # a batch of log lines that cannot reach a server that just went away is dropped silently, now
    # or when the stage process exits (Prefect's log worker prints "Error logging to API" otherwise);
    # `server_lost` says it once
    logging.raiseExceptions = False
    sys.stdout, sys.stderr = _TeeToPrefect(out, logger), _TeeToPrefect(err, logger)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


class Orchestrator:
    """Runs one stage body as a flow and maps functions over items as tasks.

    ``use_prefect=False`` (or ``task_runner: sync``) runs the same body and maps in plain Python:
    the same outputs, no flow runs recorded.
    """

    def __init__(self, common: CommonConfig, use_prefect: bool = True):
        self.common = common
        self.use_prefect = use_prefect and common.task_runner != "sync"
        self.body_s = 0.0
        self.flow_s = 0.0
        if self.use_prefect:
            import prefect  # noqa: F401 - imported with the stage, like mlflow, not inside the timed flow

    def map(
        self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, name: str | None = None
    ) -> list[Any]:
        """``[fn(item, *args) for item in items]``, as Prefect tasks on the configured runner."""
        from pipeline.progress import progress

        if not items:
            return []
        desc = name or fn.__name__
        if not self.use_prefect or _LOST:
            return [fn(item, *args) for item in progress(items, desc, unit="tasks")]
        from prefect import task, unmapped
        from prefect.cache_policies import NO_CACHE

        t = task(_guarded_call, name=desc, cache_policy=NO_CACHE, retries=0)
        try:
            futures = t.map(list(items), unmapped(fn), unmapped(args))
            results = [f.result() for f in progress(futures, desc, total=len(items), unit="tasks")]
        except Exception as e:
            if not server_lost(e):
                raise
            # the items are pure functions of their input (shards): run them all here instead
            return [fn(item, *args) for item in progress(items, desc, unit="tasks")]
        for r in results:
            if isinstance(r, _Raised):
                raise r.exc
        return results

    def run(
        self,
        name: str,
        body: Callable[[], Any],
        params: Any = None,
        tags: Sequence[str] = (),
        on_flow_run: Callable[[str], None] | None = None,
    ) -> Any:
        """Run ``body`` as the flow ``name``; records flow and body wall time for the overhead metric.
        With ``params`` (the stage's Params), the flow run carries the stage's section and `common` as
        its parameters and is tagged with the stage, profile, experiment and params hash (and
        ``tags``: the MLflow run), so past flow runs in Prefect's UI say what they ran with;
        ``on_flow_run`` receives the flow run's id, and the body's output lines go to its log."""

        raised: list[BaseException] = []
        done: list[Any] = []  # the body's result, kept here too: the flow engine may lose it
        plain: list[bool] = [not self.use_prefect]  # the body runs outside a flow (raises as is)

        def timed_body(params: dict[str, Any] | None = None) -> Any:
            t0 = time.perf_counter()
            try:
                if plain[0]:
                    done.append(body())
                    return done[-1]
                if on_flow_run is not None:
                    from prefect.runtime import flow_run

                    with contextlib.suppress(Exception):
                        on_flow_run(str(flow_run.id))
                with output_to_prefect():
                    done.append(body())
                return done[-1]
            except (Exception, KeyboardInterrupt) as e:
                if plain[0]:
                    raise
                # fail the flow run with a one-line reason instead of a logged traceback; the
                # exception itself is re-raised below, outside Prefect
                from prefect.states import Failed

                raised.append(e)
                if isinstance(e, KeyboardInterrupt):  # Ctrl-C: stopped by the user, not broken
                    from prefect.states import Cancelled

                    return Cancelled(message="interrupted (Ctrl-C)")
                return Failed(message=f"{type(e).__name__}: {str(e)[:300]}")
            finally:
                self.body_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            if plain[0] or _LOST:
                plain[0] = True
                return timed_body()
            from prefect import flow
            from prefect import tags as prefect_tags
            from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

            f = flow(
                timed_body, name=name, task_runner=make_task_runner(self.common), validate_parameters=False
            )
            parameters, labels = flow_run_labels(name, params)
            _watch_server()
            try:
                with (
                    prefect_tags(*labels, *tags),
                    temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: CLIENT_RETRIES}),
                ):
                    state = f(params=parameters, return_state=True)
            except Exception as e:
                # the server went away: the body's own outcome stands, or the body runs without Prefect
                if raised or not server_lost(e):
                    raise raised[0] if raised else e  # noqa: B904 - the body's exception, as raised
                if done:
                    return done[-1]
                plain[0] = True
                return timed_body()
            if raised:
                raise raised[0]
            if done and _LOST:
                return done[-1]
            return state.result()
        finally:
            self.flow_s = time.perf_counter() - t0

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.flow_s - self.body_s)
