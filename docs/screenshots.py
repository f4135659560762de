"""Take the README's screenshots of a finished pipeline run: the MLflow experiment page with a
grouped run, one stage's metric charts, the report card, and Prefect's flow runs.

    python docs/screenshots.py PROJECT [--out docs]

PROJECT is a project folder that has run (e.g. a scratch copy of this repository after
`lineage run`). It starts `lineage ui` there on free loopback ports, drives the system Chromium
headless through Playwright (`apt-get install chromium`, `pip install playwright`; Playwright's own
browser download is not needed), then stops the UI with SIGTERM. Not a test, and not a dependency of
the project.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {timeout_s:.0f}s")


def api(base: str, endpoint: str, body: dict[str, Any] | None = None, **query: Any) -> dict[str, Any]:
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, help="a project folder after a pipeline run")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where the PNGs go")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="the browser binary")
    args = ap.parse_args()
    project = args.project.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    mport, pport = free_port(), free_port()
    lineage = Path(sys.executable).with_name("lineage")
    ui = subprocess.Popen(
        [str(lineage), "ui", "--port", str(mport), "--prefect-port", str(pport)], cwd=project,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    mlflow, prefect = f"http://127.0.0.1:{mport}", f"http://127.0.0.1:{pport}"
    try:
        wait_for(f"{mlflow}/health")
        wait_for(f"{prefect}/api/health")
        shoot(project, args, mlflow, prefect)
    finally:
        ui.send_signal(signal.SIGTERM)  # `lineage ui` stops both servers on SIGTERM
        try:
            out, _ = ui.communicate(timeout=30)
            print(out.strip())
        except subprocess.TimeoutExpired:
            ui.kill()
    return 0


def shoot(project: Path, args: argparse.Namespace, mlflow: str, prefect: str) -> None:
    from playwright.sync_api import sync_playwright

    exp = api(mlflow, "experiments/get-by-name", experiment_name="gpt-lineage")["experiment"]["experiment_id"]
    runs = api(mlflow, "runs/search", {"experiment_ids": [exp], "max_results": 200})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parent = next(rid for rid, t in tags.items() if t.get("lineage.kind") == "pipeline")
    pretrain = next(rid for rid, t in tags.items() if t.get("stage") == "pretrain")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})

        page.goto(f"{mlflow}/#/experiments/{exp}/runs", wait_until="load")
        page.wait_for_timeout(6000)
        for label in ("Model training", "Got it"):  # the classic ML view, not GenAI; no tour popup
            with contextlib.suppress(Exception):
                page.get_by_text(label, exact=True).first.click(timeout=3000)
        with contextlib.suppress(Exception):  # the assistant side panel
            page.locator("[aria-label='Close']").last.click(timeout=2000)
        page.goto(f"{mlflow}/#/experiments/{exp}/runs", wait_until="load")
        page.wait_for_timeout(6000)
        for button in page.locator("[aria-label*='xpand'], [role='row'] button").all()[:6]:
            with contextlib.suppress(Exception):
                if button.bounding_box() and button.bounding_box()["x"] < 330:
                    button.click(timeout=2000)  # open the parent runs' groups
        page.wait_for_timeout(1500)
        page.screenshot(path=str(args.out / "mlflow-runs.png"))

        page.goto(f"{mlflow}/#/experiments/{exp}/runs/{pretrain}/model-metrics", wait_until="load")
        page.wait_for_timeout(6000)
        with contextlib.suppress(Exception):
            page.get_by_placeholder("Search metric charts").fill("loss")
        page.wait_for_timeout(3000)
        page.screenshot(path=str(args.out / "mlflow-metrics.png"))

        page.goto((project / "data" / "report" / "report.html").as_uri(), wait_until="load")
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out / "report.png"), full_page=True)

        page.goto(f"{prefect}/runs", wait_until="load")
        page.wait_for_timeout(8000)
        page.screenshot(path=str(args.out / "prefect-runs.png"))
        browser.close()
    print(f"screenshots in {args.out} (parent run {parent})", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
