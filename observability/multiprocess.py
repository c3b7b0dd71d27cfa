"""Prometheus' multiprocess mode for a process and its children (uvicorn workers, Celery's pool):
their counts go to files in one directory, which ``/metrics`` adds up. Kept apart from
metrics.py: the directory must be named before prometheus-client is imported anywhere."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def use_directory(data_dir: Path, role: str) -> None:
    """Count in ``<data_dir>/metrics/<role>-<pid>`` from now on (this process and its children)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    path = Path(data_dir).resolve() / "metrics" / f"{role}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
