"""decode_image: what people send in, what comes out, and every way it refuses
(and, at the end, the sentence the bot words each refusal with)."""

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

from bot.render import FORMATS_NAMED, refusal_text
from bot.scoring import refusal_of
from learner.images import (
    HEIF_SUPPORTED,
    IMAGE_KINDS,
    SNIFF_BYTES,
    VIDEO_KINDS,
    DecodedImage,
    ImageRejected,
    RejectReason,
    decode_image,
    sniff_image_kind,
)

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


# --- recognised by content, not by what the client calls it -----------------------------


def iso_bmff(major: bytes, *compatible: bytes) -> bytes:
    """The start of an ISO base media file (MP4, MOV, HEIF, AVIF): an ftyp box and a bit more."""
    body = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    ftyp = struct.pack(">I", 8 + len(body)) + b"ftyp" + body
    return ftyp + struct.pack(">I", 8) + b"free" + struct.pack(">I", 24) + b"mdat" + bytes(16)


# What Telegram sends for a "GIF" (an `animation`, video/mp4), what iPhones and Android
# phones record, and what browsers save.
TELEGRAM_GIF_MP4 = iso_bmff(b"isom", b"isom", b"iso2", b"avc1", b"mp41")
IPHONE_MOV = iso_bmff(b"qt  ", b"qt  ")
ANDROID_MP4 = iso_bmff(b"mp42", b"isom", b"mp42")
WEBM = b"\x1a\x45\xdf\xa3\x9fB\x86\x81\x01B\xf7\x81\x01B\xf2\x81\x04B\xf3\x81\x08B\x82\x84webm"
AVI = b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(20)

try:
    import pillow_heif

    HEIF_ENCODER = HEIF_SUPPORTED and bool(pillow_heif.libheif_info()["HEIF"])
except ImportError:  # pragma: no cover
    HEIF_ENCODER = False
needs_heif_encoder = pytest.mark.skipif(
    not HEIF_ENCODER,
    reason="this pillow-heif has no HEVC encoder (x265), so the test cannot make a HEIC file",
)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (encode(gradient(8, 8), "JPEG"), "jpeg"),
        (encode(gradient(8, 8), "PNG"), "png"),
        (encode(gradient(8, 8), "GIF"), "gif"),
        (encode(gradient(8, 8), "WEBP"), "webp"),
        (encode(gradient(8, 8), "BMP"), "bmp"),
        (encode(gradient(8, 8), "TIFF"), "tiff"),
        (iso_bmff(b"heic", b"mif1", b"heic"), "heic"),
        (iso_bmff(b"mif1", b"mif1", b"heic"), "heic"),
        (iso_bmff(b"avif", b"avif", b"mif1", b"miaf"), "avif"),
        (TELEGRAM_GIF_MP4, "mp4"),
        (ANDROID_MP4, "mp4"),
        (IPHONE_MOV, "mov"),
        (WEBM, "webm"),
        (AVI, "avi"),
        (iso_bmff(b"M4A ", b"M4A ", b"mp42", b"isom"), None),  # audio in an MP4 box
        (b"%PDF-1.4\n%%EOF", None),
        (b"hello, this is just text\n", None),
        (b"BMW is a car, not a bitmap", None),
        (b"", None),
    ],
)
def test_sniff_image_kind(data: bytes, kind: str | None) -> None:
    assert sniff_image_kind(data[:SNIFF_BYTES]) == kind


def test_kinds_decoded_and_kinds_refused_as_video_do_not_overlap() -> None:
    assert {"jpeg", "png", "gif", "webp"} <= IMAGE_KINDS
    assert not IMAGE_KINDS & VIDEO_KINDS and "mp4" in VIDEO_KINDS


@pytest.mark.parametrize("exif", [False, True], ids=["jfif", "exif"])
def test_jpeg_is_known_by_its_bytes_whatever_the_client_called_it(exif: bool) -> None:
    # An `application/octet-stream` document, a file named `photo`: decode_image is given
    # bytes only, and the first of them say JPEG (phone photos start with an Exif block).
    params: dict[str, object] = {"exif": Image.Exif().tobytes()} if exif else {}
    data = encode(gradient(300, 200), "JPEG", **params)
    if exif:  # as a camera writes it: the Exif block first, no JFIF block
        assert data[2:4] == b"\xff\xe0"
        data = data[:2] + data[4 + int.from_bytes(data[4:6], "big") :]
    assert data.startswith(b"\xff\xd8\xff\xe1" if exif else b"\xff\xd8\xff\xe0")
    assert sniff_image_kind(data[:SNIFF_BYTES]) == "jpeg"
    decoded = decode_image(data)
    assert (decoded.format, decoded.width, decoded.height) == ("JPEG", 300, 200)


@pytest.mark.parametrize("data", [TELEGRAM_GIF_MP4, IPHONE_MOV, WEBM, AVI], ids=str)
def test_video_is_refused_as_video_not_as_corrupt(data: bytes) -> None:
    error = rejected(data)
    assert error.reason is RejectReason.VIDEO and error.kind in VIDEO_KINDS


@needs_heif_encoder
def test_heic_from_an_iphone_decodes() -> None:
    im = Image.new("RGB", (96, 64), RED)
    im.paste(BLUE, (48, 0, 96, 64))
    data = encode(im, "HEIF", quality=90)
    assert sniff_image_kind(data[:SNIFF_BYTES]) == "heic"
    decoded = decode_image(data)
    assert (decoded.format, decoded.width, decoded.height) == ("HEIF", 96, 64)
    assert decoded.image.mode == "RGB" and decoded.image.size == (96, 64)
    left, right = decoded.image.getpixel((10, 32)), decoded.image.getpixel((86, 32))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


@needs_heif_encoder
def test_large_heic_is_decoded_from_its_thumbnail_or_refused_by_the_pixel_limit() -> None:
    # 1.9 Mpx over a 1 Mpx limit: with an embedded 320 px thumbnail (iPhones write one)
    # only the thumbnail is decoded; without one the whole picture would be, so it is refused.
    im = gradient(1600, 1200)
    with_thumbnail = decode_image(
        encode(im, "HEIF", quality=50, thumbnails=[320]), max_pixels=10**6
    )
    assert (with_thumbnail.width, with_thumbnail.height) == (1600, 1200)
    assert with_thumbnail.image.size == (320, 240)
    error = rejected(encode(im, "HEIF", quality=50, thumbnails=[]), max_pixels=10**6)
    assert error.reason is RejectReason.TOO_MANY_PIXELS
    assert (error.width, error.height, error.max_pixels) == (1600, 1200, 10**6)


def test_avif_decodes_where_pillow_can() -> None:
    if "avif" not in IMAGE_KINDS:
        pytest.skip("this Pillow was built without AVIF; AVIF files are refused as unsupported")
    decoded = decode_image(encode(gradient(64, 48), "AVIF", quality=90))
    assert (decoded.format, decoded.width, decoded.height) == ("AVIF", 64, 48)


# --- phone photos: large JPEGs at reduced scale, the pixel limit on what is decoded -------

# Peak memory (RSS) a decode adds, measured in a fresh process: Pillow allocates pixels with
# malloc, which tracemalloc does not see. VmHWM, not ru_maxrss: a child started by a big
# parent (this test process holds a 162 MB image) inherits the parent's ru_maxrss.
_PEAK_RSS = """
import sys
from learner.images import decode_image
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
data = open(sys.argv[1], "rb").read()
before = peak()
decoded = decode_image(data, max_pixels=int(sys.argv[2]), target_size=int(sys.argv[3]))
after = peak()
left, right = decoded.image.getpixel((10, 10)), decoded.image.getpixel((decoded.image.width - 10, 10))
print(after - before, decoded.width, decoded.height, *decoded.image.size, *left, *right)
"""
MEMORY_BOUND = 64 * 1024 * 1024  # a full decode of 54 Mpx needs 162 MB for the RGB alone


def _decode_in_fresh_process(path: str, max_pixels: int, target_size: int) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, path, str(max_pixels), str(target_size)],
        check=True,
        capture_output=True,
        text=True,
    )
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc")
def test_54_megapixel_jpeg_decodes_within_bounded_memory(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    im = Image.new("RGB", (9000, 6000), RED)  # a 54 Mpx phone original, sent as a file
    im.paste(BLUE, (4500, 0, 9000, 6000))
    path = tmp_path_factory.mktemp("photo") / "54mp.jpg"
    im.save(path, "JPEG", quality=85)
    del im
    drafted = _decode_in_fresh_process(str(path), 40_000_000, 224)
    peak, width, height, w, h = drafted[:5]
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB"
    assert (width, height) == (9000, 6000)  # the photo's own size...
    assert (w, h) == (1125, 750)  # ...decoded at 1/8 scale
    assert drafted[5] > 200 > drafted[7] and drafted[10] > 200 > drafted[8]  # red | blue
    # The bound means something: decoding the same file whole takes far more.
    whole = _decode_in_fresh_process(str(path), 10**8, 1 << 16)
    assert whole[3:5] == [9000, 6000] and whole[0] > MEMORY_BOUND, f"{whole[0] / 2**20:.0f} MiB"
    # A progressive JPEG keeps every DCT coefficient however small it is drawn: over the
    # pixel limit it is refused, as the formats decoded whole are (see the next tests).


def test_baseline_jpeg_limit_is_on_the_reduced_size_progressive_on_the_full_size() -> None:
    im = gradient(2000, 1000)  # 2 Mpx over a 1 Mpx limit
    baseline = decode_image(encode(im, "JPEG"), max_pixels=10**6)
    assert (baseline.width, baseline.height) == (2000, 1000)
    assert baseline.image.size == (500, 250)  # 1/4 scale: both sides stay >= 224
    error = rejected(encode(im, "JPEG", progressive=True), max_pixels=10**6)
    assert error.reason is RejectReason.TOO_MANY_PIXELS
    assert (error.width, error.height, error.max_pixels) == (2000, 1000, 10**6)
    # Full-size decoding (as OCR asks for) is held to the limit too.
    assert rejected(encode(im, "JPEG"), max_pixels=10**6, target_size=1 << 16).width == 2000


def test_png_over_the_pixel_limit_is_refused_with_its_numbers() -> None:
    error = rejected(encode(gradient(200, 100), "PNG"), max_pixels=19_999)
    assert error.reason is RejectReason.TOO_MANY_PIXELS
    assert (error.width, error.height, error.max_pixels) == (200, 100, 19_999)
    assert decode_image(encode(gradient(200, 100), "PNG"), max_pixels=20_000).width == 200


def test_pillows_global_limit_does_not_refuse_a_jpeg_drawn_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow refuses anything over 2 x MAX_IMAGE_PIXELS (179 Mpx) at open: a 200 Mpx phone
    # photo would never reach the reduced-scale decode. Here the same, scaled down.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    decoded = decode_image(encode(gradient(2000, 1000), "JPEG"))
    assert decoded.image.size == (500, 250)
    assert rejected(encode(gradient(400, 400), "PNG")).reason is RejectReason.TOO_MANY_PIXELS


# --- refusals ---------------------------------------------------------------------------


def test_png_header_claiming_huge_size_is_refused_from_the_header() -> None:
    data = png_header_only(60_000, 60_000)
    start = time.perf_counter()
    error = rejected(data)
    assert error.reason is RejectReason.TOO_MANY_PIXELS
    assert time.perf_counter() - start < 0.5


def test_huge_png_with_end_chunk_is_refused_even_without_pillows_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = png_header_only(60_000, 60_000) + png_chunk(b"IEND", b"")
    assert rejected(data).reason is RejectReason.TOO_MANY_PIXELS  # Pillow's own limit fires first
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert rejected(data).reason is RejectReason.TOO_MANY_PIXELS  # ours, from the header


def test_our_pixel_limit_is_below_pillows() -> None:
    # 49 Mpx passes Pillow's default 89 Mpx limit but not our 40 Mpx one.
    data = png_header_only(7_000, 7_000) + png_chunk(b"IEND", b"")
    assert rejected(data).reason is RejectReason.TOO_MANY_PIXELS
    real = encode(gradient(100, 100), "JPEG")
    assert rejected(real, max_pixels=9_999).reason is RejectReason.TOO_MANY_PIXELS
    assert decode_image(real, max_pixels=10_000).width == 100


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    data = encode(gradient(200, 150), fmt)
    assert rejected(data[: len(data) // 2]).reason is RejectReason.CORRUPT


def test_jpeg_cut_after_its_header_is_corrupt() -> None:
    data = encode(gradient(200, 150), "JPEG")
    assert rejected(data[:40]).reason is RejectReason.CORRUPT


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
    assert rejected(data).reason is RejectReason.NOT_AN_IMAGE


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"8BPS\x00\x01" + bytes(40), "psd"),
        (b"\xff\x0a\xfa\x7f" + bytes(40), "jxl"),
        (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "svg"),
    ],
    ids=["psd", "jpeg-xl", "svg"],
)
def test_image_formats_we_do_not_decode_are_unsupported(data: bytes, kind: str) -> None:
    error = rejected(data)
    assert (error.reason, error.kind) == (RejectReason.UNSUPPORTED_FORMAT, kind)


def test_format_outside_the_allowed_list_is_refused_without_pillow_parsing_it() -> None:
    error = rejected(encode(gradient(16, 16), "ICO"))
    assert (error.reason, error.kind) == (RejectReason.UNSUPPORTED_FORMAT, "ico")


def test_empty() -> None:
    assert rejected(b"").reason is RejectReason.EMPTY


def test_too_many_bytes_is_refused_before_looking_inside() -> None:
    assert rejected(b"\x00" * 1025, max_bytes=1024).reason is RejectReason.TOO_LARGE_BYTES
    big_but_fine = encode(gradient(64, 64), "PNG")
    assert (
        rejected(big_but_fine, max_bytes=len(big_but_fine) - 1).reason
        is RejectReason.TOO_LARGE_BYTES
    )
    assert decode_image(big_but_fine, max_bytes=len(big_but_fine)).width == 64
    error = rejected(b"\x00" * 1025, max_bytes=1024)
    assert (error.size_bytes, error.max_bytes) == (1025, 1024)


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
            assert error.reason in {
                RejectReason.NOT_AN_IMAGE,
                RejectReason.CORRUPT,
                RejectReason.TOO_MANY_PIXELS,
            }
        else:
            assert decoded.image.mode == "RGB"


def test_images_module_does_not_import_torch() -> None:
    code = "import sys, learner.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- what the person reads (bot/render.py) ------------------------------------------


def describe_refusal(rejected: ImageRejected) -> str:
    return refusal_text(refusal_of(rejected))


def every_refusal() -> list[ImageRejected]:
    errors = [
        rejected(b""),
        rejected(b"x" * 100),
        rejected(b"x" * 3000, max_bytes=2048),
        rejected(png_header_only(60_000, 60_000)),
        rejected(encode(gradient(50, 50), "JPEG")[:300]),
        rejected(TELEGRAM_GIF_MP4),
        rejected(b"8BPS\x00\x01" + bytes(40)),
        rejected(b"\x00\x00\x01\x00\x01\x00" + bytes(40)),
    ]
    assert {e.reason for e in errors} == set(RejectReason)
    return errors


def test_every_refusal_is_one_plain_sentence() -> None:
    sentences = [describe_refusal(e) for e in every_refusal()]
    assert len(set(sentences)) == len(sentences)  # each says its own thing
    for sentence in sentences:
        assert sentence[0].isupper() and sentence.endswith(".") and len(sentence) < 110, sentence
        assert "\n" not in sentence and ". " not in sentence, sentence
        for jargon in ("Error", "PIL", "0x", "decode", "MIME", "mime", "format", "_", "codec"):
            assert jargon not in sentence, (jargon, sentence)


def test_refusals_give_the_limits_in_plain_numbers() -> None:
    assert "2 KB" in describe_refusal(rejected(b"x" * 3000, max_bytes=2048))
    assert "20 MB" in describe_refusal(rejected(b"x" * (20 * 1024 * 1024 + 1)))
    assert "40 million pixels" in describe_refusal(rejected(png_header_only(60_000, 60_000)))
    assert "video" in describe_refusal(rejected(TELEGRAM_GIF_MP4))
    assert "Photoshop" in describe_refusal(rejected(b"8BPS\x00\x01" + bytes(40)))


_SAVE_AS = {"JPEG": "JPEG", "PNG": "PNG", "WebP": "WEBP", "GIF": "GIF", "HEIC": "HEIF"}


def test_the_formats_a_person_is_told_to_use_are_decoded() -> None:
    sentence = describe_refusal(rejected(b"x" * 100))
    assert {"JPEG", "PNG", "WebP", "GIF"} <= set(FORMATS_NAMED)
    assert ("HEIC" in FORMATS_NAMED) == HEIF_SUPPORTED
    for name in FORMATS_NAMED:
        assert name in sentence
        if name == "HEIC" and not HEIF_ENCODER:
            continue  # decodable (HEIF_SUPPORTED), but no file can be made here to show it
        assert decode_image(encode(gradient(32, 32), _SAVE_AS[name])).width == 32
