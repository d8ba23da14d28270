"""Shared by the workflow scripts: what every job does before it imports u1lib."""

import logging
import os
import sys
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parents[1]
LOGS_DIR = "logs"


def job_label(log_path: str) -> str:
    """'train loss-x0_t-uniform' from results/logs/train/loss-x0_t-uniform.log: rule and wildcards."""
    parts = Path(log_path).with_suffix("").parts
    inner = parts[parts.index(LOGS_DIR) + 1 :] if LOGS_DIR in parts else parts[-1:]
    return " ".join(inner)


def start_job(log_path: str) -> None:
    """Use the u1lib beside the Snakefile, send everything the job prints to its log, and show its
    progress lines (logger ``u1lib.progress``) on the Snakemake console as well.

    The workflow hashes that copy of u1lib to decide what to rerun, so jobs must run it too, not
    some other installed version. stdout, stderr (C extensions included) and logging go to the log,
    so a failing job's traceback lands in the file Snakemake names in its error message.
    """
    sys.path.insert(0, str(WORKFLOW_DIR))
    handle = open(log_path, "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(handle.fileno(), sys.stdout.fileno())
    os.dup2(handle.fileno(), sys.stderr.fileno())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    on_console = logging.StreamHandler(console)
    on_console.setFormatter(logging.Formatter(f"[{job_label(log_path)}] %(message)s"))
    logging.getLogger("u1lib.progress").addHandler(on_console)
