import math

import pytest
from PIL import Image

from u1lib.data.buckets import (
    OFFICIAL_8B_BUCKETS,
    Bucket,
    BucketError,
    BucketSpec,
    area_buckets,
    assign_bucket,
    check_source_size,
    fit_to_bucket,
    scale_factor,
    snap_to_tokens,
)
from u1lib.data.images import BadItem


def test_official_buckets_match_the_model_card():
    names = [b.name for b in BucketSpec("official").buckets()]
    assert names == [
        "2048x2048",
        "2720x1536",
        "1536x2720",
        "2496x1664",
        "1664x2496",
        "2368x1760",
        "1760x2368",
        "2880x1440",
        "1440x2880",
        "3456x1152",
        "1152x3456",
    ]
    for width, height in OFFICIAL_8B_BUCKETS:
        assert width % 32 == 0 and height % 32 == 0
        assert abs(width * height / 2048**2 - 1) < 0.06


@pytest.mark.parametrize("area,token_size", [(1024 * 1024, 32), (256 * 256, 8), (64 * 64, 8)])
def test_area_buckets_are_token_multiples_near_the_area_from_1_4_to_4_1(area, token_size):
    buckets = area_buckets(area, token_size)
    assert buckets[0].width == buckets[0].height
    assert len(set(buckets)) == len(buckets)
    for bucket in buckets:
        assert bucket.width % token_size == 0 and bucket.height % token_size == 0
        assert abs(bucket.width * bucket.height / area - 1) < 0.15
        assert 0.25 <= bucket.width / bucket.height <= 4
        assert Bucket(bucket.height, bucket.width) in buckets  # portraits mirror landscapes
    ratios = [b.width / b.height for b in buckets]
    assert min(ratios) == 0.25 and max(ratios) == 4


def test_area_buckets_for_1mp():
    buckets = area_buckets(1024 * 1024, 32)
    assert buckets[:3] == (Bucket(1024, 1024), Bucket(1184, 896), Bucket(896, 1184))
    assert Bucket(2048, 512) in buckets


def test_assign_bucket_picks_the_closest_aspect_ratio_in_log_space():
    buckets = BucketSpec("official").buckets()
    assert assign_bucket(4000, 3000, buckets) == Bucket(2368, 1760)  # 4:3 -> 1.345
    assert assign_bucket(3000, 4000, buckets) == Bucket(1760, 2368)
    assert assign_bucket(1920, 1080, buckets) == Bucket(2720, 1536)
    assert assign_bucket(500, 100, buckets) == Bucket(3456, 1152)  # beyond the widest


def test_assign_bucket_ties_go_to_the_earlier_bucket():
    wide, tall = Bucket(64, 32), Bucket(32, 64)
    assert assign_bucket(50, 50, (wide, tall)) == wide
    assert assign_bucket(50, 50, (tall, wide)) == tall


def test_snap_to_tokens():
    assert snap_to_tokens(1000, 700, 32) == (992, 704)
    assert snap_to_tokens(3, 100, 8) == (8, 104)
    with pytest.raises(ValueError):
        snap_to_tokens(0, 10, 8)


def test_fit_covers_then_crops_the_centre():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # the middle third is red
    out = fit_to_bucket(image, Bucket(64, 64))
    assert out.size == (64, 64)
    # cover scales 300x100 to 192x64, crop keeps columns 64..128: the red third fills it
    # (squashing or padding would bring blue in); LANCZOS rings a little at the old border
    for x in (4, 32, 59):
        assert all(abs(a - b) <= 3 for a, b in zip(out.getpixel((x, 32)), (255, 0, 0)))


def test_fit_upscales_small_images():
    out = fit_to_bucket(Image.new("RGB", (20, 10), (9, 9, 9)), Bucket(64, 32))
    assert out.size == (64, 32) and out.getpixel((5, 5)) == (9, 9, 9)


def test_scale_factor_and_too_small_rule():
    bucket = Bucket(64, 64)
    assert scale_factor(128, 256, bucket) == 0.5
    assert scale_factor(32, 64, bucket) == 2
    check_source_size(16, 100, bucket, 0.25)  # exactly a quarter is allowed
    with pytest.raises(BadItem) as caught:
        check_source_size(15, 100, bucket, 0.25)
    assert caught.value.reason == "too small" and "15" in caught.value.detail


def test_spec_from_dict_and_parse():
    spec = BucketSpec.from_dict({"kind": "area", "area": 4096, "token_size": 8})
    assert spec.buckets()[0] == Bucket(64, 64)
    assert BucketSpec.from_dict(spec.to_dict()) == spec
    assert BucketSpec.parse("area:4096", 8) == spec
    assert BucketSpec.parse("official", 32).kind == "official"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"kind": "square"}, "kind 'square'"),
        ({"kind": "area"}, "area must be"),
        ({"kind": "official", "area": 5}, "area applies only"),
        ({"kind": "official", "token_size": 64}, "does not divide"),
        ({"kind": "area", "area": 4096, "token_size": 0}, "token_size"),
        ({"kind": "area", "area": 4096, "min_source_fraction": 2}, "min_source_fraction"),
        ({"kind": "area", "aera": 4096}, "unknown key(s) aera"),
        ({"area": 4096}, "missing key 'kind'"),
    ],
)
def test_spec_errors_name_the_problem(data, message):
    with pytest.raises(BucketError, match=None) as caught:
        BucketSpec.from_dict(data)
    assert message in str(caught.value)


@pytest.mark.parametrize("text", ["area:", "area:1e6", "official:5"])
def test_parse_errors(text):
    with pytest.raises(BucketError):
        BucketSpec.parse(text, 32)


def test_log_distance_is_symmetric():
    buckets = area_buckets(4096, 8)
    for bucket in buckets:
        mirrored = assign_bucket(bucket.height, bucket.width, buckets)
        assert math.isclose(mirrored.width / mirrored.height, bucket.height / bucket.width)
