"""`python -m pipeline.dvc_quiet ARGS`: `dvc ARGS` with DVC's own progress bars off, as `lineage run`
starts it. On a terminal DVC draws a bar per output it checks or caches, a lone ``!`` where a bar
starts, and a "Waiting to acquire lock" line each time it takes the repository lock (between
stages, even with no wait): hundreds of lines around the stages' own progress. Its log lines
("Running stage ...", "Stage ... didn't change") and the stages' output are untouched."""

from __future__ import annotations

import sys


def silence_bars() -> bool:
    """Turn DVC's Tqdm off in this process; False when this DVC has no such class to patch."""
    try:
        from dvc import progress
    except ImportError:
        return False
    original = progress.Tqdm.__init__

    def quiet_init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - DVC's own signature
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    progress.Tqdm.__init__ = quiet_init
    return True


def main(argv: list[str] | None = None) -> int:
    silence_bars()
    from dvc.cli import main as dvc_main

    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
