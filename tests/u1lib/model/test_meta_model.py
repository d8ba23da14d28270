"""Building the model to load into: on the meta device, without random init or a torch._dynamo import."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CONFIG_8B


def test_the_8b_meta_model_builds_without_importing_dynamo():
    code = (
        "import sys; from u1lib.model.loading import meta_model; from u1lib.model.config import U1Config; "
        "from u1lib.model.keys import parameter_shapes; "
        f"cfg = U1Config.from_file({str(CONFIG_8B)!r}); m = meta_model(cfg); "
        "assert all(p.is_meta for p in m.parameters()); "
        "shapes = {k: tuple(p.shape) for k, p in m.named_parameters()}; "
        "print(shapes == parameter_shapes(cfg), 'torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    every_parameter, dynamo = done.stdout.split()
    assert every_parameter == "True"  # skipping the init draws left no parameter out or misshapen
    assert dynamo == "False"
