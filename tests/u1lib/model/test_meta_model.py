"""Building the model to load into: on the meta device, without random init or a torch._dynamo import."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CONFIG_8B


def test_the_8b_meta_model_builds_without_importing_dynamo():
    code = (
        "import sys; from u1lib.model.loading import meta_model; from u1lib.model.config import U1Config; "
        f"m = meta_model(U1Config.from_file({str(CONFIG_8B)!r})); "
        "assert all(p.is_meta for p in m.parameters()); "
        "print(sum(p.numel() for p in m.parameters()), 'torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, dynamo = done.stdout.split()
    assert int(count) == 17_552_340_992 and dynamo == "False"
