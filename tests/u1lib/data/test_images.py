"""Every awkward input either becomes an upright RGB image or a BadItem with a short reason."""

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from u1lib.data.images import ALLOWED_FORMATS, BadItem, decode_image, encode_png, read_file_bytes


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def raw_png(width: int, height: int, bit_depth: int, color_type: int, scanlines: bytes) -> bytes:
    """A PNG written chunk by chunk, for what Pillow cannot write (16-bit RGB, absurd sizes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def two_colour_jpeg(orientation: int) -> bytes:
    """40x20 JPEG, left half red, right half blue, with an EXIF orientation tag."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", quality=95, exif=exif.tobytes())


def is_close(pixel, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(BadItem) as caught:
        decode_image(data, **kwargs)
    return caught.value.reason


def test_zero_size_file():
    assert reason_of(b"") == "empty file"


def test_random_bytes():
    assert reason_of(random.Random(0).randbytes(2000)) == "not a recognised image"


def test_truncated_jpeg():
    data = encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert reason_of(data[: len(data) // 2]) == "truncated or corrupt image"


def test_png_with_damaged_pixel_data():
    data = bytearray(encoded(Image.effect_noise((32, 32), 50), "PNG"))
    start = data.index(b"IDAT") + 20
    data[start : start + 8] = b"\xff" * 8
    assert reason_of(bytes(data)) == "truncated or corrupt image"


def test_format_outside_the_allowed_list_is_refused():
    assert reason_of(encoded(Image.new("RGB", (8, 8)), "PCX")) == "not a recognised image"


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize(
    "data",
    [EPS, encoded(Image.new("RGB", (8, 8)), "PPM"), encoded(Image.new("RGB", (8, 8)), "TGA")],
    ids=["eps", "ppm", "tga"],
)
def test_formats_outside_the_list_never_reach_their_plugin(monkeypatch, data):
    Image.init()  # register every plugin first, so none is added unwatched later
    calls = []
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt not in ALLOWED_FORMATS:
            monkeypatch.setitem(Image.OPEN, fmt, (lambda *a, fmt=fmt: calls.append(fmt) or 1 / 0, accept))
    assert reason_of(data) == "not a recognised image"
    assert calls == []


def test_decompression_bomb_header_is_a_reason_not_a_crash():
    assert reason_of(raw_png(200_000, 200_000, 1, 0, b"\x00")) == "too many pixels"


def test_pixel_limit_is_configurable():
    data = encoded(Image.new("RGB", (300, 300)), "PNG")
    assert reason_of(data, max_pixels=10_000) == "too many pixels"
    assert decode_image(data).size == (300, 300)


def test_mangled_files_never_raise_anything_but_bad_item():
    rng = random.Random(1)
    sources = [
        encoded(Image.effect_noise((48, 32), 40).convert("RGB"), fmt)
        for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    ]
    for trial in range(120):
        data = bytearray(sources[trial % len(sources)])
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if trial % 3 == 0:
            data = data[: rng.randrange(1, len(data))]
        try:
            image = decode_image(bytes(data))
        except BadItem:
            continue
        assert image.mode == "RGB"


def test_cmyk_jpeg_becomes_rgb():
    data = encoded(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)  # pure cyan
    image = decode_image(data)
    assert image.mode == "RGB"
    assert is_close(image.getpixel((8, 8)), (0, 255, 255))


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 300, 128 * 257, 65535]], dtype=np.uint16)
    data = encoded(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_image(data)
    # Pillow's own conversion would clip 300 and 32896 to 255
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]


def test_thirty_two_bit_integer_tiff_is_read_as_sixteen_bit_range():
    data = encoded(Image.fromarray(np.array([[0, 257 * 10, 65535]], dtype=np.int32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    image = decode_image(data)
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 10, 255]


def test_sixteen_bit_rgb_png():
    pixels = np.zeros((2, 3, 3), dtype=">u2")
    pixels[..., 0], pixels[..., 1] = 65535, 0x8000
    scanlines = b"".join(b"\x00" + row.tobytes() for row in pixels)
    image = decode_image(raw_png(3, 2, 16, 2, scanlines))
    assert image.mode == "RGB" and image.getpixel((1, 1)) == (255, 128, 0)


def test_float_tiff_is_refused_with_a_reason():
    data = encoded(Image.fromarray(np.ones((4, 4), dtype=np.float32)), "TIFF")
    assert reason_of(data) == "unsupported pixel mode"


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128)])
    out = decode_image(encoded(image, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent black -> white, not black
    assert out.getpixel((1, 0)) == (255, 0, 0)
    assert is_close(out.getpixel((2, 0)), (255, 127, 127), tolerance=2)


def test_grey_with_alpha_is_composited_on_white():
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (0, 255)])
    out = decode_image(encoded(image, "PNG"))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 0)]


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.putdata([0, 1])
    data = encoded(image, "PNG", transparency=0)
    out = decode_image(data)
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 200, 0)]


def test_palette_without_transparency_keeps_its_colours():
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30] + [0] * 765)
    assert decode_image(encoded(image, "PNG")).getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize("mode,value,expected", [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255))])
def test_grey_and_one_bit_become_rgb(mode, value, expected):
    out = decode_image(encoded(Image.new(mode, (4, 4), value), "PNG"))
    assert out.mode == "RGB" and out.getpixel((2, 2)) == expected


@pytest.mark.parametrize(
    "orientation,top,bottom",
    [(6, (255, 0, 0), (0, 0, 255)), (8, (0, 0, 255), (255, 0, 0))],  # 6: rotate 90 cw to view; 8: 90 ccw
)
def test_exif_orientation_is_applied_to_the_pixels(orientation, top, bottom):
    image = decode_image(two_colour_jpeg(orientation))
    assert image.size == (20, 40)
    assert is_close(image.getpixel((10, 3)), top, tolerance=40)
    assert is_close(image.getpixel((10, 36)), bottom, tolerance=40)


def test_upright_jpeg_is_untouched():
    image = decode_image(two_colour_jpeg(1))
    assert image.size == (40, 20)
    assert is_close(image.getpixel((3, 10)), (255, 0, 0), tolerance=40)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((4, 4)) == (255, 0, 0)


def test_read_file_bytes_reports_unreadable_files(tmp_path):
    with pytest.raises(BadItem) as caught:
        read_file_bytes(tmp_path / "absent.jpg")
    assert caught.value.reason == "unreadable file"
    with pytest.raises(BadItem):
        read_file_bytes(tmp_path)  # a folder


def test_encode_png_is_deterministic_and_carries_no_metadata():
    image = Image.effect_noise((32, 16), 30).convert("RGB")
    image.info["icc_profile"] = b"not really a profile"
    first, second = encode_png(image), encode_png(image.copy())
    assert first == second
    assert b"iCCP" not in first and b"tEXt" not in first
    assert np.array_equal(np.array(Image.open(io.BytesIO(first))), np.array(image))


def test_camera_mpo_jpeg_opens_through_the_jpeg_plugin():
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    data = encoded(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert is_close(decode_image(data).getpixel((8, 8)), (255, 0, 0))
