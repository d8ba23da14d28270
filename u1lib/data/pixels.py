"""Stored PNG bytes <-> the model's pixel tensors, float32 ``[3, H, W]`` in [-1, 1].

Kept apart from the dataset reader so the sampler, which only writes PNGs, does not import pyarrow
(0.3 s of import time on this project's 2-core CPU machine).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from u1lib.data.images import STORED_FORMAT, encode_png


def load_image_tensor(png_bytes: bytes) -> torch.Tensor:
    """Decode one stored image to float32 ``[3, H, W]`` with x / 127.5 - 1 (0 -> -1, 255 -> 1).

    Only PNG is opened, the one format pack writes: bytes of any other kind never reach another
    Pillow plugin (EPS would start Ghostscript). Anything unreadable raises ValueError.
    """
    if not png_bytes:
        raise ValueError("the image cell is empty")
    try:
        with Image.open(io.BytesIO(png_bytes), formats=(STORED_FORMAT,)) as image:
            pixels = np.array(image.convert("RGB"), dtype=np.uint8)  # [H, W, 3], a writable copy
    except UnidentifiedImageError:
        raise ValueError(f"the image cell is not a {STORED_FORMAT} file (pack stores {STORED_FORMAT} only)") from None
    except Exception as err:  # noqa: BLE001 -- truncated streams and bad chunks surface as many exception types
        raise ValueError(f"the image cell is a damaged {STORED_FORMAT} ({type(err).__name__}: {err})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous().to(torch.float32) / 127.5 - 1.0


def image_png(image: torch.Tensor) -> bytes:
    """[3, H, W] in [-1, 1] -> PNG bytes (clamp, scale, round): what a sampled image is stored as."""
    pixels = ((image.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return encode_png(Image.fromarray(pixels))
