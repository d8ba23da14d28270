"""Shared by the workflow scripts: what every job does before it imports u1lib."""

import logging
import os
import sys
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parents[1]


def start_job(log_path: str) -> None:
    """Use the u1lib beside the Snakefile and send everything the job prints to its log.

    The workflow hashes that copy of u1lib to decide what to rerun, so jobs must run it too, not
    some other installed version. stdout, stderr (C extensions included) and logging go to the log,
    so a failing job's traceback lands in the file Snakemake names in its error message.
    """
    sys.path.insert(0, str(WORKFLOW_DIR))
    handle = open(log_path, "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(handle.fileno(), sys.stdout.fileno())
    os.dup2(handle.fileno(), sys.stderr.fileno())
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
