"""Safe image decoding: bytes from a chat user in, one RGB picture out, or one clear refusal.

Everything here is Pillow only (no torch), so it can run anywhere, including a worker thread.

What :func:`decode_image` guarantees:

* Refusals happen as early and as cheaply as possible: size in bytes first, then the pixel
  count from the file header, before any pixel is decoded. Our limit does not depend on
  Pillow's global ``Image.MAX_IMAGE_PIXELS`` (which may be ``None``), and we never set
  ``ImageFile.LOAD_TRUNCATED_IMAGES``.
* Every failure is an :class:`ImageRejected` whose message is one sentence fit to show the
  person who sent the file; the details go to the log.
* The result is RGB with the EXIF orientation applied. Transparent pixels are composited on
  white, as CLIP's own image processor does.
* Animated images (GIF, APNG, animated WebP): only the FIRST frame is used, and
  ``animated=True`` says so.
* JPEGs are decoded at reduced scale (``Image.draft``) when they are much larger than the
  model's input: the DCT decoder then skips most of the work. The shorter side never drops
  below ``target_size``, so CLIP's resize still only shrinks.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import Final, Literal

from PIL import Image, ImageOps

log = logging.getLogger(__name__)

RejectReason = Literal["not_image", "corrupt", "too_large_pixels", "too_large_bytes", "empty"]

# Formats we let Pillow open. Anything else (EPS runs Ghostscript, PSD, ICO, ...) is refused:
# each extra format is extra attack surface and nobody sends those in a chat.
# Pillow's JPEG opener also opens MPO, the multi-picture JPEG many phone cameras write.
ALLOWED_FORMATS: Final = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Leading bytes of the formats above: a file that starts like an image but will not open
# is "corrupt", not "not an image".
_SIGNATURES: Final = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# Pillow's own pixel limit; the warning is an exception too when warnings are errors.
_BOMB_ERRORS: Final = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# What Pillow's EXIF parser raises on a damaged block (anything else counts as corrupt).
_EXIF_ERRORS: Final = (OSError, SyntaxError, ValueError, KeyError, IndexError, struct.error)


_DEFAULT_MESSAGES: Final[dict[RejectReason, str]] = {
    "empty": "That file is empty.",
    "not_image": "That file is not an image I can read.",
    "corrupt": "That image seems to be damaged or incomplete, so I can't read it.",
    "too_large_pixels": "That image is too large for me to process.",
    "too_large_bytes": "That file is too big for me to process.",
}


class ImageRejected(Exception):
    """A file we will not decode. ``str(exc)`` is one sentence for the person who sent it."""

    def __init__(
        self, reason: RejectReason, message: str | None = None, *, detail: str = ""
    ) -> None:
        message = message or _DEFAULT_MESSAGES[reason]
        super().__init__(message)
        self.reason: RejectReason = reason
        self.message = message
        self.detail = detail  # for the log, never for the chat


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, upright RGB image and what we learnt about the file on the way."""

    image: Image.Image  # RGB; may be smaller than width x height (JPEG draft decoding)
    width: int  # full-resolution size, after EXIF orientation (as the person sees it)
    height: int
    format: str  # "JPEG", "PNG", "WEBP", "GIF", "BMP" or "TIFF"
    animated: bool  # several frames in the file; ``image`` is the first one


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int = 20 * 1024 * 1024,
    target_size: int = 224,
) -> DecodedImage:
    """Decode ``data`` into an upright RGB image, or raise :class:`ImageRejected`."""
    if not data:
        raise ImageRejected("empty")
    if len(data) > max_bytes:
        raise ImageRejected(
            "too_large_bytes",
            f"That file is too big: please send an image under {_human_bytes(max_bytes)}.",
            detail=f"{len(data)} bytes > {max_bytes}",
        )

    # Pillow will not even open a PNG that ends after its header, so read the size ourselves:
    # a 60000x60000 header must be refused as too large, not as unreadable.
    png_size = _png_header_size(data)
    if png_size is not None:
        _check_pixels(*png_size, max_pixels=max_pixels)

    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except _BOMB_ERRORS as exc:  # Pillow's own (global) limit, if it is lower than ours
        raise _too_many_pixels(str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, OSError, struct.error...
        if data.startswith(_SIGNATURES) or _is_webp(data):
            raise _corrupt(f"open: {exc!r}") from exc
        raise ImageRejected("not_image", detail=repr(exc)) from exc

    width, height = im.size
    _check_pixels(width, height, max_pixels=max_pixels)
    fmt = "JPEG" if im.format == "MPO" else str(im.format)
    try:
        animated = bool(getattr(im, "is_animated", False))
        if animated:
            im.seek(0)
        if fmt == "JPEG" and target_size > 0:
            # Decode at 1/2, 1/4 or 1/8 scale; Pillow keeps both sides >= target_size.
            im.draft("RGB", (target_size, target_size))
        im.load()
        decoded_size = im.size
        _exif_upright_in_place(im)
        rgb = to_rgb(im)
        if rgb is im and animated:
            rgb = im.copy()  # let go of the multi-frame file, which Pillow keeps open
    except _BOMB_ERRORS as exc:
        raise _too_many_pixels(str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # OSError("image file is truncated"), SyntaxError, ...
        raise _corrupt(f"decode {fmt}: {exc!r}") from exc

    if rgb.size != decoded_size:
        width, height = height, width  # the EXIF orientation turned it by 90 or 270 degrees
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, animated=animated)


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


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _check_pixels(width: int, height: int, *, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise _too_many_pixels(f"{width}x{height} > {max_pixels} pixels", max_pixels)


def _too_many_pixels(detail: str, max_pixels: int | None = None) -> ImageRejected:
    limit = f" (over {max_pixels / 1e6:g} megapixels)" if max_pixels else ""
    return ImageRejected(
        "too_large_pixels",
        f"That image is too large{limit} for me to process.",
        detail=detail,
    )


def _corrupt(detail: str) -> ImageRejected:
    return ImageRejected("corrupt", detail=detail)


def _human_bytes(n: int) -> str:
    for unit, size in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"
