"""Text in pixels: OCR for screenshots (profiles, chats, memes), treated like a caption.

Uses the Tesseract binary through ``pytesseract`` when both are installed (Debian/Ubuntu:
``apt-get install tesseract-ocr``, which brings English; other languages are packages such as
``tesseract-ocr-deu``). Without either, :func:`ocr_available` is False and :func:`extract_text`
returns "" for every image: images are then scored on their pixels (and any caption) alone.
Nothing here raises for a bad image or a failing engine; failures are logged at DEBUG.

Cost: Tesseract takes on the order of a second per screenshot on one CPU core (see the
``ocr_timing`` line in the tests' report / the learner README), several times a CLIP ViT-B/32
forward, so the bot should run it off the event loop and off the scoring hot path (e.g. score
first, OCR in the background, or only when the text weight is non-zero).

Only words Tesseract is reasonably sure of (confidence >= ``min_confidence``) and that contain a
letter or digit are kept: on photos without text Tesseract otherwise "reads" edges as ``|``,
``—`` and stray letters, and that noise would be embedded like a caption.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

_available: bool | None = None  # cached answer of ocr_available(); reset_cache() clears it
_lock = threading.Lock()
_WORD = re.compile(r"\w", re.UNICODE)
_SPACE = re.compile(r"\s+")

# Tesseract reads text whose capital letters are ~20-40 px tall best; past this side the
# image is shrunk first (time grows with pixels; 2000 px keeps phone-screenshot text legible).
MAX_SIDE = 2000
TIMEOUT_SECONDS = 15.0


def _pytesseract() -> Any:
    """The pytesseract module, or None when it is not installed."""
    try:
        import pytesseract  # optional dependency
    except ImportError:
        return None
    return pytesseract


def ocr_available() -> bool:
    """Whether OCR works here: pytesseract imports and the tesseract binary runs (cached)."""
    global _available
    with _lock:
        if _available is None:
            _available = _probe()
            if not _available:
                log.info(
                    "OCR unavailable (no pytesseract or no tesseract binary): "
                    "text in images is not read"
                )
        return _available


def reset_cache() -> None:
    """Forget the cached :func:`ocr_available` answer (after installing Tesseract; in tests)."""
    global _available
    with _lock:
        _available = None


def _probe() -> bool:
    pytesseract = _pytesseract()
    if pytesseract is None:
        return False
    try:
        pytesseract.get_tesseract_version()
    except Exception as error:  # TesseractNotFoundError, a broken binary, ...
        log.debug("tesseract does not run: %s", error)
        return False
    return True


def extract_text(
    image: Image.Image,
    *,
    max_chars: int = 300,
    lang: str = "eng",
    min_confidence: float = 60.0,
) -> str:
    """The text Tesseract reads in ``image``, whitespace collapsed, at most ``max_chars`` long.

    "" when OCR is unavailable, nothing legible is found, or anything goes wrong (a broken
    image, a missing language pack, a timeout). Cut at a word boundary where possible.
    """
    if max_chars <= 0 or not ocr_available():
        return ""
    try:
        prepared = _prepare(image)
        if prepared is None:
            return ""
        pytesseract = _pytesseract()
        data = pytesseract.image_to_data(
            prepared,
            lang=lang,
            output_type=pytesseract.Output.DICT,
            timeout=TIMEOUT_SECONDS,
        )
    except Exception as error:  # never let OCR break scoring
        log.debug("OCR failed: %s", error, exc_info=True)
        return ""
    words = [
        str(word)
        for word, confidence in zip(data.get("text", []), data.get("conf", []), strict=False)
        if _WORD.search(str(word)) and _confidence(confidence) >= min_confidence
    ]
    return _truncate(_SPACE.sub(" ", " ".join(words)).strip(), max_chars)


def _prepare(image: Image.Image) -> Image.Image | None:
    """Grayscale on white (transparency flattened), shrunk to ``MAX_SIDE``; None if empty."""
    width, height = image.size
    if width < 1 or height < 1:
        return None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        image = flat
    gray = image.convert("L")
    longest = max(width, height)
    if longest > MAX_SIDE:
        scale = MAX_SIDE / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    return gray


def _confidence(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return -1.0


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else text[:max_chars]).rstrip()
