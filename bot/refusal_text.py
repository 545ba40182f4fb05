"""What a person reads when the bot will not score their file: one plain sentence per reason.

For the transition only: these sentences move into the bot's one text module. learner/
says why (ImageRejected.reason) and gives the numbers; the words are chosen here.
"""

from __future__ import annotations

from learner.images import ALLOWED_FORMATS, ImageRejected, RejectReason

# The formats a person is told to use: the everyday ones that decode_image accepts (it also
# takes BMP and TIFF, which nobody needs to be told about). Names as people know them.
_EVERYDAY: dict[str, str] = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "HEIF": "HEIC",
    "GIF": "GIF",
}
FORMATS_NAMED: tuple[str, ...] = tuple(
    name for fmt, name in _EVERYDAY.items() if fmt in ALLOWED_FORMATS
)
_FORMAT_LIST = ", ".join(FORMATS_NAMED[:-1]) + " or " + FORMATS_NAMED[-1]

# What a sniffed kind that is never decoded is called in a sentence.
_KIND_NAMES: dict[str, str] = {
    "heic": "HEIC",
    "avif": "AVIF",
    "jxl": "JPEG XL",
    "jp2": "JPEG 2000",
    "psd": "Photoshop",
    "ico": "icon",
    "svg": "SVG",
}


def describe_refusal(rejected: ImageRejected) -> str:
    """One friendly sentence saying why the file was not scored and what to send instead."""
    match rejected.reason:
        case RejectReason.EMPTY:
            return "That file is empty; please send the picture again."
        case RejectReason.TOO_LARGE_BYTES:
            limit = "" if rejected.max_bytes is None else f" (over {_mb(rejected.max_bytes)})"
            return f"That file is too big for me{limit}; please send a smaller copy."
        case RejectReason.TOO_MANY_PIXELS:
            limit = (
                ""
                if rejected.max_pixels is None
                else f" (over {rejected.max_pixels / 1e6:g} million pixels)"
            )
            return f"That picture is too big for me{limit}; please send a smaller copy."
        case RejectReason.NOT_AN_IMAGE:
            return f"That file is not an image I can read; please send a photo or a {_FORMAT_LIST} file."
        case RejectReason.UNSUPPORTED_FORMAT:
            name = _KIND_NAMES.get(rejected.kind or "", "that kind of")
            return f"I can't open {name} files; please save it as {_FORMAT_LIST} and send it again."
        case RejectReason.VIDEO:
            return "That's a video, and I only score pictures; please send a photo or a screenshot of it."
        case RejectReason.CORRUPT:
            return (
                "That picture seems damaged or cut off, so I can't read it; please send it again."
            )
    return "I couldn't read that file; please send a photo instead."  # a reason added later


def _mb(n: int) -> str:
    """Bytes as people count them on a phone: whole MB, or KB below one MB."""
    mb = n / (1024 * 1024)
    if mb >= 1:
        return f"{mb:.3g} MB"
    return f"{max(1, round(n / 1024))} KB"
