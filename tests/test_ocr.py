"""OCR of text in images; the tests that need Tesseract skip where it is not installed."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from learner import ocr
from learner.ocr import extract_text, ocr_available

needs_tesseract = pytest.mark.skipif(
    not ocr_available(), reason="no tesseract binary or pytesseract (apt-get install tesseract-ocr)"
)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    ocr.reset_cache()
    yield
    ocr.reset_cache()


def rendered(
    lines: list[str],
    *,
    size: tuple[int, int] = (900, 300),
    font_size: int = 64,
    mode: str = "RGB",
    background: object = "white",
) -> Image.Image:
    image = Image.new(mode, size, background)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    for i, line in enumerate(lines):
        draw.text((30, 30 + i * round(font_size * 1.4)), line, font=font, fill="black")
    return image


@needs_tesseract
def test_reads_a_large_clear_word() -> None:
    assert "TASTEBOT" in extract_text(rendered(["TASTEBOT"])).upper()


@needs_tesseract
def test_reads_lines_collapses_whitespace_and_cuts_at_a_word() -> None:
    image = rendered(["hello   world", "second line here"], font_size=48)
    text = extract_text(image)
    assert text.lower() == "hello world second line here"
    short = extract_text(image, max_chars=14)
    assert short.lower() == "hello world" and len(short) <= 14
    assert extract_text(image, max_chars=0) == ""


@needs_tesseract
def test_text_on_a_transparent_background_is_read() -> None:
    image = rendered(["Profile"], mode="RGBA", background=(0, 0, 0, 0))
    assert "profile" in extract_text(image).lower()


@needs_tesseract
def test_a_picture_without_text_gives_nothing() -> None:
    yy, xx = np.mgrid[0:240, 0:320]
    smooth = (127 + 120 * np.sin(np.stack([xx / 17, yy / 23, (xx + yy) / 31], -1))).astype(np.uint8)
    assert extract_text(Image.fromarray(smooth)) == ""
    assert extract_text(Image.new("RGB", (0, 0))) == ""


@needs_tesseract
def test_a_broken_image_or_language_gives_nothing() -> None:
    buffer = io.BytesIO()
    rendered(["TRUNCATED"]).save(buffer, "PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:200]))  # decoding fails lazily
    assert extract_text(truncated) == ""
    assert extract_text(rendered(["TASTEBOT"]), lang="no-such-language") == ""


def test_without_the_tesseract_binary_ocr_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    pytesseract = pytest.importorskip("pytesseract")
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    assert ocr_available() is False
    assert extract_text(rendered(["TASTEBOT"])) == ""


def test_without_pytesseract_ocr_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytesseract", None)  # makes `import pytesseract` fail
    assert ocr_available() is False
    assert extract_text(rendered(["TASTEBOT"])) == ""


def test_the_answer_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ocr_available()
    monkeypatch.setitem(sys.modules, "pytesseract", None)
    assert ocr_available() is first  # not probed again
    ocr.reset_cache()
    assert ocr_available() is False
