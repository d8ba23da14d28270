"""Aspect-kept buckets (dataset.buckets kind aspect): each image at the largest size with its own aspect
ratio within the area, sides multiples of the given multiple, nothing cropped but the rounding remainder."""

from __future__ import annotations

import io
import json
import math

import pytest
from PIL import Image

from u1lib.data.buckets import ASPECT_RESIZE_POLICY, Bucket, BucketError, BucketSpec, aspect_bucket, scale_factor
from u1lib.data.images import BadItem
from u1lib.data.pack import pack
from u1lib.data.reader import PackedDataset

SOURCES = [(512, 512), (451, 300), (600, 400), (741, 500), (1000, 872), (640, 427), (300, 451), (1920, 1080)]
SOURCES += [(4000, 999), (333, 1777), (257, 263), (7, 5), (1, 3)]


@pytest.mark.parametrize("area,multiple", [(512 * 512, 32), (4096, 8), (1024 * 1024, 64), (300 * 300, 32)])
@pytest.mark.parametrize("width,height", SOURCES)
def test_buckets_keep_the_aspect_within_rounding_and_never_exceed_the_area(width, height, area, multiple):
    bucket = aspect_bucket(width, height, area, multiple)
    assert bucket.width % multiple == 0 and bucket.height % multiple == 0
    assert bucket.width * bucket.height <= area
    # the largest such size: one more multiple on either side would pass the image's scale to the area
    scale = math.sqrt(area / (width * height))
    assert bucket.width <= width * scale < bucket.width + multiple
    assert bucket.height <= height * scale < bucket.height + multiple
    # cover scaling trims less than one multiple, on one axis only: no content crop beyond the remainder
    cover = scale_factor(width, height, bucket)
    trimmed = (width * cover - bucket.width, height * cover - bucket.height)
    assert min(trimmed) == pytest.approx(0, abs=1e-6)
    assert -1e-6 <= max(trimmed) < multiple


def test_a_bucket_by_hand():
    # 1920x1080 in 512² at 32: s = sqrt(262144 / 2073600) = 0.35556 -> 682.7 x 384.0 -> 672 x 384
    assert aspect_bucket(1920, 1080, 512 * 512, 32) == Bucket(672, 384)
    assert aspect_bucket(1080, 1920, 512 * 512, 32) == Bucket(384, 672)
    assert aspect_bucket(64, 64, 4096, 8) == Bucket(64, 64)  # exactly the area: integer math, no float shortfall


def test_too_elongated_images_are_refused_not_cropped():
    with pytest.raises(BadItem, match="aspect ratio too extreme"):
        aspect_bucket(1000, 10, 64 * 64, 32)  # 10:1000 of 4096 px leaves a 6-px short side


def test_the_spec_checks_kind_area_and_multiple():
    spec = BucketSpec.from_dict({"kind": "aspect", "area": 262144, "token_size": 32, "multiple": 64})
    assert spec.side_multiple == 64 and spec.buckets() == ()
    assert spec.bucket_for(1920, 1080) == aspect_bucket(1920, 1080, 262144, 64)
    assert spec.resize_policy == ASPECT_RESIZE_POLICY
    assert BucketSpec("aspect", 4096, 8).side_multiple == 8  # default: the token size
    assert BucketSpec.parse("aspect:4096", 8) == BucketSpec("aspect", 4096, 8)
    assert BucketSpec.from_dict(spec.to_dict()) == spec
    bad = {
        "multiple must be a positive multiple of token_size 32, got 48": {"area": 262144, "multiple": 48},
        "area must be an integer >= multiple**2 for kind 'aspect', got None": {},
        "area must be an integer >= multiple**2 for kind 'aspect', got 1000": {"area": 1000},
    }
    for message, keys in bad.items():
        with pytest.raises(BucketError, match=message.replace("*", r"\*")):
            BucketSpec.from_dict({"kind": "aspect", "token_size": 32, **keys})
    with pytest.raises(BucketError, match="multiple applies only to kind 'aspect'.*multiple=32 with kind 'area'"):
        BucketSpec("area", 4096, 8, multiple=32)


def test_fit_keeps_the_content_and_trims_only_the_remainder():
    # a 400x100 image: left half red, right half blue, with a 1-px green frame
    image = Image.new("RGB", (400, 100), (255, 0, 0))
    image.paste((0, 0, 255), (200, 0, 400, 100))
    spec = BucketSpec("aspect", 64 * 64, 8)
    bucket = spec.bucket_for(*image.size)
    assert bucket == Bucket(128, 32)  # s = sqrt(4096 / 40000) = 0.32 -> exactly 128 x 32: nothing trimmed
    out = spec.fit(image, bucket)
    assert out.size == (128, 32)
    assert out.getpixel((1, 16))[0] > 200 and out.getpixel((126, 16))[2] > 200  # both ends still there
    # 410x100 -> s 0.316: 129.6 x 31.6 -> 128 x 24; covering scales to 128 x 31.2 and trims 7.2 px (< 8)
    skewed = Image.new("RGB", (410, 100), (255, 0, 0))
    skewed.paste((0, 0, 255), (205, 0, 410, 100))
    bucket = spec.bucket_for(*skewed.size)
    assert bucket == Bucket(128, 24)
    assert spec.fit(skewed, bucket).size == (128, 24)


def test_pack_stores_each_image_at_its_own_bucket(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, size in {"wide": (600, 300), "tall": (300, 600), "square": (500, 500), "wide2": (1200, 600)}.items():
        buffer = io.BytesIO()
        Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
        (src / f"{name}.png").write_bytes(buffer.getvalue())
        (src / f"{name}.txt").write_text(f"a {name} picture")
    stats = pack(src, tmp_path / "out", buckets=BucketSpec("aspect", 64 * 64, 8))
    data = PackedDataset(tmp_path / "out" / "train.parquet")
    sizes = dict(zip(data.sample_ids, zip(data.widths, data.heights)))
    assert sizes == {"square": (64, 64), "tall": (40, 88), "wide": (88, 40), "wide2": (88, 40)}
    assert stats["buckets"]["names"] == ["40x88", "64x64", "88x40"]  # the buckets used: no fixed list
    assert stats["resize"]["policy"] == ASPECT_RESIZE_POLICY
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["buckets"]["spec"]["kind"] == "aspect"
