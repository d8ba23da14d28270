"""The shipped U1.5 shapes (bench --config, no download): the 8B towers with the convolutional head."""

from __future__ import annotations

import math
from pathlib import Path

from u1lib.model.config import U1Config
from u1lib.model.keys import parameter_shapes

U15_CONFIG = Path(__file__).parents[3] / "u1lib" / "model" / "u15_8b_config.json"
U1_CONFIG = U15_CONFIG.with_name("u1_8b_config.json")


def test_u15_is_the_8b_towers_with_the_pixel_head_and_noise_max_16():
    u15, u1 = U1Config.from_file(U15_CONFIG), U1Config.from_file(U1_CONFIG)
    assert u15.use_pixel_head and not u1.use_pixel_head
    assert (u15.noise_scale_max_value, u1.noise_scale_max_value) == (16.0, 8.0)
    shapes15, shapes1 = parameter_shapes(u15), parameter_shapes(u1)
    towers = {k for k in shapes1 if not k.startswith("fm_modules.fm_head")}
    assert all(shapes15[k] == shapes1[k] for k in towers)  # every tower weight is the 8B one
    conv = sum(math.prod(s) for k, s in shapes15.items() if k.startswith("fm_modules.fm_head.conv"))
    assert round(conv / 1e6, 1) == 9.9  # issue 12: about 9.9 M parameters in the conv keys
