"""decode_image: what people send in, what comes out, and every way it refuses."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from learner.images import DecodedImage, ImageRejected, decode_image

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB image: compresses like a photo, and any misplacement shows."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR claiming ``width`` x ``height`` RGB pixels, nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


def rejected(data: bytes, **limits: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **limits)
    return info.value


# --- what comes out ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [("JPEG", {"quality": 95}, 8), ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0)],
)
def test_round_trip(fmt: str, params: dict[str, object], tolerance: int) -> None:
    original = gradient(120, 80)
    decoded = decode_image(encode(original, fmt, **params))
    assert isinstance(decoded, DecodedImage)
    assert (decoded.format, decoded.width, decoded.height) == (fmt, 120, 80)
    assert decoded.image.mode == "RGB" and decoded.image.size == (120, 80)
    assert not decoded.animated
    difference = np.abs(np.asarray(decoded.image, np.int16) - np.asarray(original, np.int16))
    assert difference.max() <= tolerance


def test_exif_orientation_is_applied() -> None:
    # Stored 64 wide x 32 high, left half red; orientation 6 = "rotate 90 degrees clockwise
    # to display", so the person sees 32 wide x 64 high with the red half on top.
    stored = Image.new("RGB", (64, 32), BLUE)
    stored.paste(RED, (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.image.size == (32, 64)
    assert (decoded.width, decoded.height) == (32, 64)
    top, bottom = decoded.image.getpixel((16, 8)), decoded.image.getpixel((16, 56))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60  # red
    assert bottom[2] > 200 and bottom[0] < 60  # blue


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_broken_exif_is_ignored_not_fatal() -> None:
    data = encode(gradient(40, 30), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff")
    decoded = decode_image(data)
    assert decoded.image.size == (40, 30)


def test_rgba_transparency_becomes_white() -> None:
    im = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 10, 10))
    decoded = decode_image(encode(im, "PNG"))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((5, 5)) == RED
    assert decoded.image.getpixel((15, 5)) == (255, 255, 255)


def test_palette_with_transparency_becomes_rgb_on_white() -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (0, 0, 5, 10))
    decoded = decode_image(encode(im, "PNG", transparency=0))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((2, 2)) == RED
    assert decoded.image.getpixel((8, 2)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "I;16", "CMYK", "1"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    im = gradient(16, 16).convert(mode) if mode != "I;16" else Image.new("I;16", (16, 16), 300)
    decoded = decode_image(encode(im, fmt))
    assert decoded.image.mode == "RGB" and decoded.image.size == (16, 16)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (24, 16), color) for color in (RED, BLUE, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(data)
    assert decoded.animated and decoded.format == "GIF"
    assert decoded.image.mode == "RGB" and decoded.image.size == (24, 16)
    assert decoded.image.getpixel((3, 3)) == RED


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (24, 16), color) for color in (BLUE, RED)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    decoded = decode_image(data)
    assert decoded.animated and decoded.format == "WEBP"
    assert decoded.image.getpixel((3, 3)) == BLUE


def test_still_gif_is_not_animated() -> None:
    decoded = decode_image(encode(Image.new("RGB", (8, 8), RED), "GIF"))
    assert not decoded.animated and decoded.image.getpixel((1, 1)) == RED


@pytest.mark.parametrize("size", [(2000, 1000), (1000, 2000), (1280, 720), (900, 230), (448, 448)])
def test_large_jpeg_is_decoded_at_reduced_scale_but_not_below_target(size: tuple[int, int]) -> None:
    data = encode(gradient(*size), "JPEG", quality=85)
    decoded = decode_image(data, target_size=224)
    assert (decoded.width, decoded.height) == size  # the file's own size
    assert min(decoded.image.size) >= 224
    if min(size) >= 448:
        assert decoded.image.size[0] <= size[0] // 2  # really decoded smaller
    # Same aspect ratio, within the rounding of a 1/2, 1/4 or 1/8 scale decode.
    assert decoded.image.size[0] / decoded.image.size[1] == pytest.approx(size[0] / size[1], 0.02)


def test_rotated_large_jpeg_reports_upright_full_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    decoded = decode_image(encode(gradient(1600, 900), "JPEG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (900, 1600)
    assert decoded.image.size[0] < decoded.image.size[1] and min(decoded.image.size) >= 224


# --- refusals ---------------------------------------------------------------------------


def test_png_header_claiming_huge_size_is_refused_from_the_header() -> None:
    data = png_header_only(60_000, 60_000)
    start = time.perf_counter()
    error = rejected(data)
    assert error.reason == "too_large_pixels"
    assert time.perf_counter() - start < 0.5


def test_huge_png_with_end_chunk_is_refused_even_without_pillows_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = png_header_only(60_000, 60_000) + png_chunk(b"IEND", b"")
    assert rejected(data).reason == "too_large_pixels"  # Pillow's own limit fires first
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert rejected(data).reason == "too_large_pixels"  # ours, from the header


def test_our_pixel_limit_is_below_pillows() -> None:
    # 49 Mpx passes Pillow's default 89 Mpx limit but not our 40 Mpx one.
    data = png_header_only(7_000, 7_000) + png_chunk(b"IEND", b"")
    assert rejected(data).reason == "too_large_pixels"
    real = encode(gradient(100, 100), "JPEG")
    assert rejected(real, max_pixels=9_999).reason == "too_large_pixels"
    assert decode_image(real, max_pixels=10_000).width == 100


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    data = encode(gradient(200, 150), fmt)
    assert rejected(data[: len(data) // 2]).reason == "corrupt"


def test_jpeg_cut_after_its_header_is_corrupt() -> None:
    data = encode(gradient(200, 150), "JPEG")
    assert rejected(data[:40]).reason == "corrupt"


@pytest.mark.parametrize(
    "data",
    [
        random.Random(7).randbytes(4096),
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n%%EOF\n",
        b"hello, this is just text\n" * 10,
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # never to Ghostscript
        b"\x00",
    ],
    ids=["random", "pdf", "text", "eps", "one-byte"],
)
def test_not_an_image(data: bytes) -> None:
    assert rejected(data).reason == "not_image"


def test_format_outside_the_allowed_list_is_not_an_image() -> None:
    assert rejected(encode(gradient(16, 16), "ICO")).reason == "not_image"


def test_empty() -> None:
    assert rejected(b"").reason == "empty"


def test_too_many_bytes_is_refused_before_looking_inside() -> None:
    assert rejected(b"\x00" * 1025, max_bytes=1024).reason == "too_large_bytes"
    big_but_fine = encode(gradient(64, 64), "PNG")
    assert rejected(big_but_fine, max_bytes=len(big_but_fine) - 1).reason == "too_large_bytes"
    assert decode_image(big_but_fine, max_bytes=len(big_but_fine)).width == 64


def test_messages_are_one_sentence_for_a_person() -> None:
    errors = [
        rejected(b""),
        rejected(b"x" * 100),
        rejected(b"x" * 100, max_bytes=50),
        rejected(b"x" * 3000, max_bytes=2048),
        rejected(png_header_only(60_000, 60_000)),
        rejected(encode(gradient(50, 50), "JPEG")[:300]),
    ]
    assert {e.reason for e in errors} == {
        "empty",
        "not_image",
        "too_large_bytes",
        "too_large_pixels",
        "corrupt",
    }
    for error in errors:
        message = str(error)
        assert message == error.message and message[0].isupper() and message.endswith(".")
        assert "\n" not in message and ". " not in message and len(message) < 100
        assert "Error" not in message and "PIL" not in message and "0x" not in message
    assert "50 bytes" in str(errors[2]) and "2 KB" in str(errors[3])
    assert "20 MB" in str(rejected(b"x" * (20 * 1024 * 1024 + 1)))
    assert str(ImageRejected("corrupt")) == str(errors[-1])  # a default sentence per reason


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damage it skips
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_mangled_files_never_raise_anything_but_image_rejected(fmt: str) -> None:
    base = encode(gradient(48, 32), fmt)
    rng = random.Random(fmt)
    for _ in range(60):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        try:
            decoded = decode_image(bytes(data))
        except ImageRejected as error:
            assert error.reason in {"not_image", "corrupt", "too_large_pixels"}
        else:
            assert decoded.image.mode == "RGB"


def test_images_module_does_not_import_torch() -> None:
    code = "import sys, learner.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
