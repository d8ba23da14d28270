"""Aspect-ratio buckets: the sizes images are stored at, and how one image is fitted to its bucket.

Training batches hold images of one bucket, so every side must be a multiple of the model's token
size (32 px for the 8B model: 16-px patches merged 2x2). Three kinds:

* ``official``: the 11 ~4 MP buckets the 8B model was trained on (docs/MODEL.md §6.3);
* ``area``: one bucket per aspect ratio of :data:`AREA_ASPECT_RATIOS` (1:4 .. 4:1), each with an
  area close to a target such as 1024*1024;
* ``aspect``: no list: each image gets its own bucket, the largest size with its aspect ratio whose
  sides are multiples of ``multiple`` (default the token size) within ``area`` pixels
  (:func:`aspect_bucket`; upstream's training keeps each image's aspect ratio, docs/UPSTREAM_NOW.md §2).

Resize policy of ``official`` and ``area``, "cover then center crop": scale the image (LANCZOS)
until it covers the bucket, then cut the bucket out of the centre. ``aspect`` scales the image
(BICUBIC, as upstream) by one factor until it covers its bucket and trims only the rounding
remainder, under ``multiple`` pixels on one axis, split between both edges: no content crop beyond
that, no padding. Images smaller than their bucket are upscaled (and counted); images whose short
side is below ``min_source_fraction`` of the bucket's short side are refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

from PIL import Image, ImageOps

from u1lib.data.images import BadItem

OFFICIAL_8B_BUCKETS = (
    (2048, 2048),
    (2720, 1536),
    (1536, 2720),
    (2496, 1664),
    (1664, 2496),
    (2368, 1760),
    (1760, 2368),
    (2880, 1440),
    (1440, 2880),
    (3456, 1152),
    (1152, 3456),
)
# W/H of the landscape area buckets (the official ratios plus 4:1); portraits mirror them.
AREA_ASPECT_RATIOS = (1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 3.0, 4.0)
RESIZE_POLICY = "cover then center crop (LANCZOS)"
ASPECT_RESIZE_POLICY = "aspect kept: scale (BICUBIC) to cover, trim the rounding remainder (< multiple px) centred"
BUCKET_KINDS = ("official", "area", "aspect")


class BucketError(ValueError):
    """A bucket specification that cannot be used."""


class Bucket(NamedTuple):
    width: int
    height: int

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class BucketSpec:
    """Which buckets to use; ``area`` only for kinds "area" and "aspect", ``multiple`` only for "aspect"."""

    kind: str
    area: int | None = None
    token_size: int = 32
    min_source_fraction: float = 0.25
    multiple: int | None = None  # kind aspect: bucket sides are multiples of this; None = token_size

    def __post_init__(self):
        problems = []
        if self.kind not in BUCKET_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(BUCKET_KINDS)}")
        if not _is_positive_int(self.token_size):
            problems.append(f"token_size must be a positive integer, got {self.token_size!r}")
        if self.multiple is not None and self.kind != "aspect":
            problems.append(
                f"multiple applies only to kind 'aspect' (got multiple={self.multiple!r} with kind {self.kind!r})"
            )
        elif self.multiple is not None and not (
            _is_positive_int(self.multiple)
            and _is_positive_int(self.token_size)
            and self.multiple % self.token_size == 0
        ):
            problems.append(
                f"multiple must be a positive multiple of token_size {self.token_size!r}, got {self.multiple!r}"
            )
        side = self.side_multiple
        if self.kind in ("area", "aspect") and not (
            _is_positive_int(self.area) and _is_positive_int(side) and self.area >= side**2
        ):
            name = "token_size" if self.kind == "area" else "multiple"
            problems.append(f"area must be an integer >= {name}**2 for kind {self.kind!r}, got {self.area!r}")
        if self.kind == "official" and self.area is not None:
            problems.append(f"area applies only to kind 'area' (got area={self.area!r} with kind 'official')")
        if isinstance(self.min_source_fraction, bool) or not (
            isinstance(self.min_source_fraction, (int, float)) and 0 <= self.min_source_fraction <= 1
        ):
            problems.append(f"min_source_fraction must be a number in [0, 1], got {self.min_source_fraction!r}")
        if self.kind == "official" and _is_positive_int(self.token_size):
            odd = [f"{w}x{h}" for w, h in OFFICIAL_8B_BUCKETS if w % self.token_size or h % self.token_size]
            if odd:
                problems.append(f"token_size {self.token_size} does not divide the official buckets {', '.join(odd)}")
        if problems:
            raise BucketError("bucket spec: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict) -> BucketSpec:
        """Build from a config mapping, naming unknown or missing keys."""
        if not isinstance(data, dict):
            raise BucketError(f"bucket spec must be a mapping, got {type(data).__name__}")
        known = {"kind", "area", "token_size", "min_source_fraction", "multiple"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BucketError(f"bucket spec: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        if "kind" not in data:
            raise BucketError("bucket spec: missing key 'kind' (official, area or aspect)")
        return cls(**data)

    @classmethod
    def parse(cls, text: str, token_size: int, min_source_fraction: float = 0.25) -> BucketSpec:
        """Parse the command-line form ``official``, ``area:<pixels>`` or ``aspect:<pixels>``."""
        kind, _, area = text.partition(":")
        if kind in ("area", "aspect"):
            if not area.isdigit():
                raise BucketError(f"--buckets {text!r}: write {kind}:<pixels>, e.g. {kind}:1048576")
            return cls(kind, int(area), token_size, min_source_fraction)
        if area:
            raise BucketError(
                f"--buckets {text!r}: only 'area' and 'aspect' take a value; "
                "use 'official', 'area:<pixels>' or 'aspect:<pixels>'"
            )
        return cls(kind, None, token_size, min_source_fraction)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def side_multiple(self) -> int:
        """What every bucket side is a multiple of."""
        return self.token_size if self.multiple is None else self.multiple

    @property
    def resize_policy(self) -> str:
        return ASPECT_RESIZE_POLICY if self.kind == "aspect" else RESIZE_POLICY

    def buckets(self) -> tuple[Bucket, ...]:
        """The bucket list; empty for kind aspect, whose buckets follow each image (:meth:`bucket_for`)."""
        if self.kind == "official":
            return tuple(Bucket(w, h) for w, h in OFFICIAL_8B_BUCKETS)
        if self.kind == "aspect":
            return ()
        return area_buckets(self.area, self.token_size)

    def bucket_for(self, width: int, height: int) -> Bucket:
        """The bucket an image of ``width`` x ``height`` is stored at."""
        if self.kind == "aspect":
            return aspect_bucket(width, height, self.area, self.side_multiple)
        return assign_bucket(width, height, self.buckets())

    def fit(self, image: Image.Image, bucket: Bucket) -> Image.Image:
        """``image`` resized to ``bucket`` by this kind's policy (:attr:`resize_policy`)."""
        if self.kind == "aspect":
            return fit_keeping_aspect(image, bucket)
        return fit_to_bucket(image, bucket)


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def snap_to_tokens(width: int, height: int, token_size: int) -> tuple[int, int]:
    """Round a requested (W, H) to the nearest multiples of the token size (halves up, at least one token)."""
    if not all(_is_positive_int(v) for v in (width, height, token_size)):
        raise ValueError(f"size {width}x{height} and token size {token_size} must be positive integers")
    return tuple(max(token_size, (side + token_size // 2) // token_size * token_size) for side in (width, height))


def area_buckets(area: int, token_size: int) -> tuple[Bucket, ...]:
    """One bucket per aspect ratio (square first, then landscape/portrait pairs), duplicates removed.

    Each side of the landscape bucket is rounded down or up to a token multiple, whichever pair stays
    closest to both the ratio and the area (sum of the two log errors); the portrait one mirrors it.
    """
    buckets: list[Bucket] = []
    for ratio in AREA_ASPECT_RATIOS:
        widths = _nearby_multiples(math.sqrt(area * ratio), token_size)
        heights = _nearby_multiples(math.sqrt(area / ratio), token_size)
        landscape = min(
            (Bucket(w, h) for w in widths for h in heights),
            key=lambda b: abs(math.log(b.width / b.height / ratio)) + abs(math.log(b.width * b.height / area)),
        )
        for bucket in (landscape, Bucket(landscape.height, landscape.width)):
            if bucket not in buckets:
                buckets.append(bucket)
    return tuple(buckets)


def _nearby_multiples(side: float, token_size: int) -> tuple[int, ...]:
    below = max(token_size, math.floor(side / token_size) * token_size)
    return (below, below + token_size)


def aspect_bucket(width: int, height: int, area: int, multiple: int) -> Bucket:
    """The largest size with the image's aspect ratio within ``area`` pixels, sides rounded down to ``multiple``.

    With s = sqrt(area / (width * height)), the bucket is (floor(width * s), floor(height * s)) in
    multiples: its area never exceeds ``area`` and its aspect ratio differs from the image's only by
    that rounding. Computed in integers (w^2 * height <= area * width), so no float rounding can push
    a side over. An image too elongated for one multiple on its short side is refused.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive")
    bucket = Bucket(
        math.isqrt(area * width // height) // multiple * multiple,
        math.isqrt(area * height // width) // multiple * multiple,
    )
    if min(bucket) == 0:
        raise BadItem(
            "aspect ratio too extreme",
            f"{width}x{height} leaves no {multiple}-px side within {area} px without cropping",
        )
    return bucket


def assign_bucket(width: int, height: int, buckets: tuple[Bucket, ...]) -> Bucket:
    """The bucket whose aspect ratio is closest in log space; ties go to the earlier bucket."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive")
    target = math.log(width / height)
    # rounding makes mirror-image ties (e.g. exactly between two ratios) exact
    return min(buckets, key=lambda b: round(abs(math.log(b.width / b.height) - target), 12))


def scale_factor(width: int, height: int, bucket: Bucket) -> float:
    """How much "cover" scales the image: > 1 means upscaled, < 1 downscaled."""
    return max(bucket.width / width, bucket.height / height)


def check_source_size(width: int, height: int, bucket: Bucket, min_source_fraction: float) -> None:
    """Refuse images whose short side is far below the bucket's (upscaling them only adds blur)."""
    needed = min_source_fraction * min(bucket)
    if min(width, height) < needed:
        raise BadItem(
            "too small",
            f"{width}x{height} for bucket {bucket.name}: short side {min(width, height)} < "
            f"{min_source_fraction} x {min(bucket)}",
        )


def fit_to_bucket(image: Image.Image, bucket: Bucket) -> Image.Image:
    """Resize so the image covers the bucket (LANCZOS), then crop the bucket from the centre."""
    return ImageOps.fit(image, (bucket.width, bucket.height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def fit_keeping_aspect(image: Image.Image, bucket: Bucket) -> Image.Image:
    """Scale by one factor (BICUBIC) until the image covers its :func:`aspect_bucket`, trimming the remainder.

    The same cover-then-centre operation as :func:`fit_to_bucket`; for an aspect bucket the part cut
    away is the rounding remainder, under one multiple of the bucket on one axis.
    """
    return ImageOps.fit(image, (bucket.width, bucket.height), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
