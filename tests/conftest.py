"""Shared fixtures: the golden folder, the 8B config, a small random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_u1_tiny_a"
CONFIG_8B = Path(__file__).parents[1] / "u1lib" / "model" / "u1_8b_config.json"


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


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory):
    """Tiny snapshot + packed demo photos (64x64-area buckets) + prefix cache, built once per session."""
    from u1lib.cache import build_cache
    from u1lib.data.buckets import BucketSpec
    from u1lib.data.demo import write_demo_folder
    from u1lib.data.pack import pack
    from u1lib.snapshot_record import snapshot_tiny

    root = tmp_path_factory.mktemp("tiny")
    snapshot_tiny(root / "snapshot", root / "manifest.json", seed=0)
    write_demo_folder(Path(__file__).parents[1] / "config" / "demo_captions.yaml", root / "raw")
    pack(root / "raw", root / "data", buckets=BucketSpec(kind="area", area=64 * 64, token_size=8), val_count=2)
    data = [root / "data" / "train.parquet", root / "data" / "val.parquet"]
    build_cache(root / "snapshot", root / "manifest.json", data, root / "cache")
    return {
        "root": root,
        "snapshot_dir": root / "snapshot",
        "manifest_path": root / "manifest.json",
        "train_parquet": data[0],
        "val_parquet": data[1],
        "cache_dir": root / "cache",
    }
