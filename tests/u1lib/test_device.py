"""The compile cache folder: torch's inductor and Triton caches resolve inside it."""

from __future__ import annotations

from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir

from u1lib.device import use_compile_cache


def test_compile_caches_resolve_under_the_folder(tmp_path, monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, "/elsewhere")  # restored after the test, whatever it sets
    folder = use_compile_cache(tmp_path / "compile")
    assert folder == (tmp_path / "compile").resolve()
    assert cache_dir() == str(folder)
    assert triton_cache_dir(0).startswith(str(folder))
    assert (folder / "triton").is_dir()
