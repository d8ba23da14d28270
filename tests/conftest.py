"""Shared fixtures: the golden folder, the 8B config, a small random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_u1_tiny_a"
CONFIG_8B = DATA / "u1_8b_config.json"


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: end-to-end runs of the whole pipeline (slower)")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped on machines without it")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def golden_model():
    from u1lib.model.loading import load_model

    return load_model(GOLDEN, ["und", "gen", "fm", "embed", "vision_und"])
