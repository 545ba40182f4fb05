"""Safe image decoding: bytes from a chat user in, one RGB picture out, or one refusal.

Everything here is Pillow only (no torch), so it can run anywhere, including a worker thread.

What :func:`decode_image` guarantees:

* A file is recognised by its CONTENT (:func:`sniff_image_kind` on its first bytes), never by
  the name or MIME type a client claims, and only the plugin for that kind ever parses it.
* Refusals happen as early and as cheaply as possible: size in bytes first, then what the
  first bytes say, then the pixel count from the file header, before any pixel is decoded.
  Our limit does not depend on Pillow's global ``Image.MAX_IMAGE_PIXELS`` (which may be
  ``None``), and we never set ``ImageFile.LOAD_TRUNCATED_IMAGES``.
* Every failure is an :class:`ImageRejected` with a machine-readable :class:`RejectReason`
  and the numbers behind it. Person-facing sentences live in the bot, not here.
* The result is RGB with the EXIF orientation applied. Transparent pixels are composited on
  white, as CLIP's own image processor does.
* Animated images (GIF, APNG, animated WebP, HEIF sequences): only the FIRST frame is used,
  and ``animated=True`` says so. Videos (MP4, MOV, WebM...) are refused as ``VIDEO``: the
  chat adapters score a video or an animation from the thumbnail the platform makes.
* The pixel limit bounds what is DECODED. Baseline JPEGs are decoded at reduced scale
  (``Image.draft``: 1/2, 1/4 or 1/8, the DCT decoder skips most of the work and memory), so
  a 100-megapixel phone photo costs a few MB; the limit then applies to the reduced size.
  HEIC/HEIF files with an embedded thumbnail at least ``target_size`` big are decoded from
  it. Everything else is decoded whole, and so is a progressive JPEG (libjpeg keeps every
  DCT coefficient of it, ~3 bytes a pixel), so there the limit applies to the full size.
  The shorter side never drops below ``target_size``, so CLIP's resize still only shrinks.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from PIL import Image, ImageOps, JpegImagePlugin, features

try:  # HEIC/HEIF, the format iPhones save photos in, through the pillow-heif plugin
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - a dependency; without it HEIC is "unsupported"
    HEIF_SUPPORTED = False
else:
    register_heif_opener()  # Pillow's format "HEIF"; idempotent
    HEIF_SUPPORTED = True

log = logging.getLogger(__name__)


class RejectReason(StrEnum):
    """Why :func:`decode_image` refused a file. The values are stable codes for logs and
    records (the first five are the codes used before this enum existed)."""

    EMPTY = "empty"
    TOO_LARGE_BYTES = "too_large_bytes"  # size_bytes > max_bytes
    TOO_MANY_PIXELS = "too_large_pixels"  # width x height (as decoded) > max_pixels
    NOT_AN_IMAGE = "not_image"  # the first bytes are no image or video format we know
    UNSUPPORTED_FORMAT = "unsupported_format"  # an image, in a format we do not decode
    VIDEO = "video"  # a video (e.g. a Telegram "GIF", which is an MP4)
    CORRUPT = "corrupt"  # starts like an image we decode, but will not decode


# Leading bytes needed by :func:`sniff_image_kind` (ISO-BMFF brands come after byte 16).
SNIFF_BYTES: Final = 64

# What :func:`decode_image` decodes: sniffed kind -> Pillow format. JPEG is opened with
# Pillow's JPEG plugin directly (see _open); MPO, the multi-picture JPEG many phone cameras
# write, is a JPEG whose first picture is the photo.
_PILLOW_FORMATS: Final[dict[str, str]] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    **({"heic": "HEIF"} if HEIF_SUPPORTED else {}),
    **({"avif": "AVIF"} if features.check("avif") else {}),
}
IMAGE_KINDS: Final = frozenset(_PILLOW_FORMATS)
VIDEO_KINDS: Final = frozenset({"mp4", "mov", "webm", "avi"})
# Kinds sniff_image_kind knows that decode_image refuses as UNSUPPORTED_FORMAT: each extra
# format is extra attack surface (EPS runs Ghostscript, ...) and they are rare in a chat.
UNSUPPORTED_KINDS: Final = (
    frozenset({"heic", "avif", "jxl", "jp2", "psd", "ico", "svg"}) - IMAGE_KINDS
)
# Pillow's format names of what decode_image accepts (DecodedImage.format is one of them).
ALLOWED_FORMATS: Final = tuple(_PILLOW_FORMATS.values())

_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_VIDEO_BRANDS: Final = frozenset(
    {
        b"isom",
        b"iso2",
        b"iso4",
        b"iso5",
        b"iso6",
        b"mp41",
        b"mp42",
        b"avc1",
        b"M4V ",
        b"M4VH",
        b"M4VP",
        b"mmp4",
        b"dash",
        b"f4v ",
        b"MSNV",
        b"XAVC",
        b"3gp4",
        b"3gp5",
        b"3gp6",
        b"3g2a",
    }
)
_AUDIO_BRANDS: Final = frozenset({b"M4A ", b"M4B ", b"M4P "})
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES: Final = (b"MM\x00*", b"II*\x00", b"MM\x00+", b"II+\x00")
# Pillow's own pixel limit; the warning is an exception too when warnings are errors.
_BOMB_ERRORS: Final = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# What Pillow's EXIF parser raises on a damaged block (anything else counts as corrupt).
_EXIF_ERRORS: Final = (OSError, SyntaxError, ValueError, KeyError, IndexError, struct.error)


def sniff_image_kind(head: bytes) -> str | None:
    """What a file is, from its first bytes (:data:`SNIFF_BYTES` suffice), or None.

    Cheap and safe on any bytes: nothing is parsed beyond magic numbers. Images give
    "jpeg", "png", "gif", "webp", "bmp", "tiff", "heic", "avif" (decoded when in
    :data:`IMAGE_KINDS`), or "jxl", "jp2", "psd", "ico", "svg" (never decoded); videos give
    "mp4", "mov", "webm" or "avi" (:data:`VIDEO_KINDS`).
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00":  # reserved, always 0
        return "bmp"
    if head.startswith(_TIFF_SIGNATURES):
        return "tiff"
    if head[4:8] == b"ftyp":
        return _sniff_iso_bmff(head)
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM
        return "webm"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "jxl"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "jp2"
    if head.startswith(b"8BPS"):
        return "psd"
    if head.startswith(b"\x00\x00\x01\x00") and head[4:6] not in (b"", b"\x00\x00"):
        return "ico"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<") and b"<svg" in head.lower():
        return "svg"
    return None


def _sniff_iso_bmff(head: bytes) -> str | None:
    """HEIF, AVIF or a video, from an ISO base media file's ``ftyp`` box (major brand at
    8..12, compatible brands from 16 to the end of the box)."""
    box_end = min(int.from_bytes(head[:4], "big"), len(head))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heic"
    if head[8:12] in _AUDIO_BRANDS:
        return None
    if head[8:12] == b"qt  ":
        return "mov"
    if brands & _VIDEO_BRANDS:
        return "mp4"
    return None  # camera raw (CR3), ...


class ImageRejected(Exception):
    """A file :func:`decode_image` will not turn into a picture.

    ``reason`` says why; the attributes below carry the numbers behind it (None when they do
    not apply). ``str(exc)`` is for the log (``"<reason>: <detail>"``), never for a person:
    the bot words refusals (``bot/render.py``).
    """

    def __init__(
        self,
        reason: RejectReason,
        *,
        detail: str = "",
        kind: str | None = None,
        size_bytes: int | None = None,
        max_bytes: int | None = None,
        width: int | None = None,
        height: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason: RejectReason = reason
        self.detail = detail  # for the log
        self.kind = kind  # what sniff_image_kind made of the file (e.g. "mp4", "psd")
        self.size_bytes = size_bytes  # the file's size (TOO_LARGE_BYTES)
        self.max_bytes = max_bytes
        self.width = width  # the picture's full size (TOO_MANY_PIXELS)
        self.height = height
        self.max_pixels = max_pixels


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, upright RGB image and what we learnt about the file on the way."""

    image: Image.Image  # RGB; may be smaller than width x height (JPEG draft, HEIF thumbnail)
    width: int  # full-resolution size, after EXIF orientation (as the person sees it)
    height: int
    format: str  # one of ALLOWED_FORMATS: "JPEG", "PNG", "WEBP", "GIF", "HEIF", ...
    animated: bool  # several frames in the file; ``image`` is the first one


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int = 20 * 1024 * 1024,
    target_size: int = 224,
) -> DecodedImage:
    """Decode ``data`` into an upright RGB image, or raise :class:`ImageRejected`.

    ``max_pixels`` bounds the pixels decoded (see the module docstring: a baseline JPEG or
    a HEIF with a thumbnail may be far bigger); ``target_size`` is the smallest side worth
    decoding (the model's input size; 0 or a huge value decodes at full size).
    """
    kind = _checked_kind(data, max_bytes)
    # Pillow will not even open a PNG that ends after its header, so read the size ourselves:
    # a 60000x60000 header must be refused as too large, not as unreadable.
    png_size = _png_header_size(data)
    if png_size is not None:
        _check_pixels(*png_size, max_pixels)

    try:
        im = _open(data, kind)
    except _BOMB_ERRORS as exc:  # Pillow's own (global) limit, if it is lower than ours
        raise _too_many_pixels(str(exc), max_pixels) from exc
    except MemoryError:
        raise
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, OSError, struct.error...
        raise _corrupt(f"open {kind}: {exc!r}", kind) from exc
    return _decode(im, kind, max_pixels, target_size)


def _checked_kind(data: bytes, max_bytes: int) -> str:
    """The image kind ``data`` starts as; :class:`ImageRejected` if it is empty, too large,
    a video, an unsupported image or no image."""
    if not data:
        raise ImageRejected(RejectReason.EMPTY, size_bytes=0, max_bytes=max_bytes)
    if len(data) > max_bytes:
        raise ImageRejected(
            RejectReason.TOO_LARGE_BYTES,
            detail=f"{len(data)} bytes > {max_bytes}",
            size_bytes=len(data),
            max_bytes=max_bytes,
        )
    kind = sniff_image_kind(data[:SNIFF_BYTES])
    if kind in VIDEO_KINDS:
        raise ImageRejected(RejectReason.VIDEO, detail=f"{kind} video", kind=kind)
    if kind in UNSUPPORTED_KINDS:
        raise ImageRejected(RejectReason.UNSUPPORTED_FORMAT, detail=f"{kind} image", kind=kind)
    if kind is None:
        raise ImageRejected(
            RejectReason.NOT_AN_IMAGE, detail=f"starts with {data[:16]!r}", kind=None
        )
    return kind


def _decode(im: Image.Image, kind: str, max_pixels: int, target_size: int) -> DecodedImage:
    """Decode the opened ``im`` (its first frame, at the smallest size worth it), upright and
    RGB; :class:`ImageRejected` if it is too large or does not decode."""
    width, height = im.size
    fmt = _PILLOW_FORMATS[kind]
    try:
        animated = bool(getattr(im, "is_animated", False))
        if animated:
            im.seek(0)
        if fmt in ("JPEG", "HEIF") and 0 < target_size < min(width, height):
            # JPEG: decode at 1/2, 1/4 or 1/8 scale, both sides >= target_size (Pillow's
            # rule). HEIF: the smallest embedded thumbnail at least that big, if any.
            im.draft("RGB", (target_size, target_size))
        # A progressive JPEG keeps all its DCT coefficients (~3 bytes a pixel) in memory
        # however small it is drawn: for the limit it is decoded whole.
        whole = fmt == "JPEG" and bool(im.info.get("progressive"))
        _check_pixels(*((width, height) if whole else im.size), max_pixels, (width, height))
        im.load()
        decoded_size = im.size
        _exif_upright_in_place(im)
        rgb = to_rgb(im)
        if rgb is im and animated:
            rgb = im.copy()  # let go of the multi-frame file, which Pillow keeps open
    except ImageRejected:
        raise
    except _BOMB_ERRORS as exc:
        raise _too_many_pixels(str(exc), max_pixels, (width, height)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # OSError("image file is truncated"), SyntaxError, ...
        raise _corrupt(f"decode {fmt}: {exc!r}", kind) from exc

    if rgb.size != decoded_size:
        width, height = height, width  # the EXIF orientation turned it by 90 or 270 degrees
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, animated=animated)


def _open(data: bytes, kind: str) -> Image.Image:
    """Open (not decode) ``data`` with the one Pillow plugin for ``kind``."""
    if kind == "jpeg":
        # The plugin itself, not Image.open: Image.open applies Pillow's global pixel limit
        # to the FULL size, and refuses a 200-megapixel photo that decodes at 1/8 scale in
        # a few MB. Our own limit, on what is decoded, follows the draft.
        return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    return Image.open(io.BytesIO(data), formats=(_PILLOW_FORMATS[kind],))


def to_rgb(im: Image.Image) -> Image.Image:
    """Return an RGB version of ``im``; transparency is composited on white (as CLIP does)."""
    if im.mode == "RGB":
        return im
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _exif_upright_in_place(im: Image.Image) -> None:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as it is."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except _EXIF_ERRORS as exc:  # malformed EXIF is common and harmless: keep the pixels
        log.info("ignoring unreadable EXIF orientation: %r", exc)


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk, or None if ``data`` is not that."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _check_pixels(
    width: int, height: int, max_pixels: int, full_size: tuple[int, int] | None = None
) -> None:
    """Refuse decoding ``width`` x ``height`` pixels over ``max_pixels``; the refusal names
    the picture's ``full_size`` (what the person knows), which a draft may exceed."""
    if width * height > max_pixels:
        detail = f"decoding {width}x{height} > {max_pixels} pixels"
        raise _too_many_pixels(detail, max_pixels, full_size or (width, height))


def _too_many_pixels(
    detail: str, max_pixels: int, size: tuple[int, int] | None = None
) -> ImageRejected:
    return ImageRejected(
        RejectReason.TOO_MANY_PIXELS,
        detail=detail,
        width=None if size is None else size[0],
        height=None if size is None else size[1],
        max_pixels=max_pixels,
    )


def _corrupt(detail: str, kind: str) -> ImageRejected:
    return ImageRejected(RejectReason.CORRUPT, detail=detail, kind=kind)
