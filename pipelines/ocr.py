"""Offline OCR: the text lines of a picture, with their boxes, and the picture's text in reading order.

Two engines, both without a network:

* ``rapidocr`` (the default): RapidOCR (PyPI ``rapidocr-onnxruntime``), PaddleOCR's PP-OCRv4 detection and
  recognition networks and its direction classifier as ONNX files shipped inside the wheel, run by onnxruntime.
* ``tesseract``: the Tesseract 5 command line (Debian ``tesseract-ocr``, English data ``tesseract-ocr-eng``), one
  ``tesseract - - tsv`` process per picture (TSV columns: Tesseract's ``TessBaseAPI::GetTSVText``).

Why RapidOCR is the default (measured on the two rustdoc screenshots of ``examples/images/``, 3013x1561 and
3024x1349 pixels, on 2 CPU cores shared with other jobs, so the ranges are wide;
``benchmarks/multimodal_throughput.py --ocr-compare`` repeats it): Tesseract took 1.2-2.5 s a picture, RapidOCR
2.0-7.3 s. Both found ``add_one`` and "Adds one to the number given." in both, but on code and icons Tesseract
misread more: ``i132`` for ``i32``, ``let answer my_crate::add_one(arg) ;`` without its ``=``, and icon noise
(``&``, ``@``, ``¥``, ``Vv``), where RapidOCR read every code line exactly and erred once (``'I'`` for ``'/'``) and
read one icon as a CJK character. RapidOCR also reads text on photos and at angles (a detection network, not page
layout analysis), and needs no system package (a pip wheel with its models), so it installs wherever the
project's Python dependencies do. Tesseract stays selectable (``make_ocr("tesseract")``) for CPU-bound scanned-text
workloads, where it is good and about twice as fast.

Coordinates are pixels of the picture given, origin top left, ``x`` to the right, ``y`` down.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import shutil
import subprocess
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from core.errors import ConfigurationError, ExtractionError

logger = logging.getLogger(__name__)

#: Engine names accepted by :func:`make_ocr`.
ENGINES = ("rapidocr", "tesseract", "none")
#: Lines recognised with a lower confidence than this (0..1) are dropped (RapidOCR's own default).
DEFAULT_MIN_SCORE = 0.5
#: Tesseract's word confidences run lower for the same quality: at 0.5 it dropped right words ("a collection")
#: on the rustdoc screenshots, at 0.3 it kept them and still dropped most icon noise.
TESSERACT_MIN_SCORE = 0.3
#: Seconds one Tesseract process may run on one picture.
TESSERACT_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class OcrLine:
    """One recognised line (RapidOCR) or word run on one line (Tesseract).

    Attributes:
        text: the recognised text, stripped, never empty.
        score: the engine's confidence, 0..1.
        box: the axis-aligned bounding box ``(left, top, right, bottom)`` in pixels (``right``/``bottom``
            exclusive), of the quadrilateral the engine found.
    """

    text: str
    score: float
    box: tuple[int, int, int, int]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


class OcrEngine(Protocol):
    """What the image stage needs from an OCR engine."""

    name: str

    def recognize(self, image: Image.Image) -> list[OcrLine]:
        """The text lines of an ``RGB`` picture, in the engine's order (roughly top to bottom)."""
        ...


class RapidOcrEngine:
    """RapidOCR on onnxruntime (CPU; the models come with the wheel).

    The ONNX sessions load in ``__init__`` (about 0.5 s); one engine serves one actor, calls one at a time.

    Args:
        min_score: lines below this confidence are dropped.
        num_threads: onnxruntime intra-op threads per session; ``None``: onnxruntime's default (all cores).

    Raises:
        ConfigurationError: ``rapidocr-onnxruntime`` is not installed.
    """

    name = "rapidocr"

    def __init__(self, *, min_score: float = DEFAULT_MIN_SCORE, num_threads: int | None = None) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ConfigurationError("OCR engine 'rapidocr' needs the package rapidocr-onnxruntime: pip install it") from exc
        kwargs = {} if num_threads is None else {"intra_op_num_threads": int(num_threads)}
        self.min_score = min_score
        self._engine = RapidOCR(**kwargs)

    def recognize(self, image: Image.Image) -> list[OcrLine]:
        """Detect, orient and recognise the text lines of ``image`` (``RGB``; RapidOCR converts it to BGR).

        Raises:
            ExtractionError: ``ocr_failed`` when onnxruntime fails on the picture.
        """
        try:
            # convert() copies even an RGB picture: 192 MB more for the largest one allowed
            result, _elapsed = self._engine(image if image.mode == "RGB" else image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - onnxruntime and OpenCV raise their own types
            raise ExtractionError("ocr_failed", f"RapidOCR failed: {type(exc).__name__}: {exc}") from exc
        lines: list[OcrLine] = []
        for quad, text, score in result or []:
            text = str(text).strip()
            if not text or float(score) < self.min_score:
                continue
            points = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
            box = (int(np.floor(points[:, 0].min())), int(np.floor(points[:, 1].min())),
                   int(np.ceil(points[:, 0].max())), int(np.ceil(points[:, 1].max())))
            lines.append(OcrLine(text=text, score=float(score), box=_clip(box, image.size)))
        return lines


class TesseractEngine:
    """The ``tesseract`` command (Debian ``tesseract-ocr``); words are grouped back into Tesseract's lines.

    Args:
        languages: Tesseract language codes joined by ``+`` (``eng``; the data must be installed).
        min_score: words below this confidence (Tesseract's 0..100, divided by 100) are dropped.
        binary: the executable, looked up on ``PATH``.

    Raises:
        ConfigurationError: the executable is not found.
    """

    name = "tesseract"

    def __init__(self, *, languages: str = "eng", min_score: float = TESSERACT_MIN_SCORE, binary: str = "tesseract") -> None:
        path = shutil.which(binary)
        if path is None:
            raise ConfigurationError("OCR engine 'tesseract' needs the tesseract command: apt-get install tesseract-ocr")
        self.binary, self.languages, self.min_score = path, languages, min_score

    def recognize(self, image: Image.Image) -> list[OcrLine]:
        """Run Tesseract on ``image`` and return one :class:`OcrLine` per line it found.

        Raises:
            ExtractionError: ``ocr_failed`` when the process fails or runs over ``TESSERACT_TIMEOUT_S``.
        """
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG", compress_level=1)
        try:
            done = subprocess.run([self.binary, "-", "-", "-l", self.languages, "tsv"], input=buffer.getvalue(),
                                  capture_output=True, timeout=TESSERACT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ExtractionError("ocr_failed", f"tesseract ran over {TESSERACT_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            raise ExtractionError("ocr_failed", f"tesseract exited {done.returncode}: {done.stderr[-300:]!r}")
        words: dict[tuple[int, int, int], list[tuple[str, float, tuple[int, int, int, int]]]] = {}
        for row in csv.DictReader(io.StringIO(done.stdout.decode("utf-8", "replace")), delimiter="\t",
                                  quoting=csv.QUOTE_NONE):
            text, conf = (row.get("text") or "").strip(), float(row.get("conf") or -1)
            if row.get("level") != "5" or not text or conf / 100.0 < self.min_score:
                continue
            left, top = int(row["left"]), int(row["top"])
            box = (left, top, left + int(row["width"]), top + int(row["height"]))
            words.setdefault((int(row["block_num"]), int(row["par_num"]), int(row["line_num"])), []).append(
                (text, conf / 100.0, box))
        lines = []
        for key in sorted(words):
            run = words[key]
            boxes = [box for _, _, box in run]
            box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
            lines.append(OcrLine(text=" ".join(t for t, _, _ in run), score=float(np.mean([s for _, s, _ in run])),
                                 box=_clip(box, image.size)))
        return lines


class NoOcr:
    """An engine that finds no text (``SLUICE_OCR_ENGINE=none``: images are indexed by their CLIP vector only)."""

    name = "none"

    def recognize(self, image: Image.Image) -> list[OcrLine]:
        return []


def make_ocr(engine: str = "rapidocr", **kwargs) -> OcrEngine:
    """Build the OCR engine named ``engine`` (one of ``ENGINES``); ``kwargs`` go to its constructor.

    Raises:
        ConfigurationError: an unknown name, or the engine's package or executable is missing.
    """
    if engine == "rapidocr":
        return RapidOcrEngine(**kwargs)
    if engine == "tesseract":
        return TesseractEngine(**kwargs)
    if engine == "none":
        return NoOcr()
    raise ConfigurationError(f"unknown OCR engine {engine!r}: use one of {', '.join(ENGINES)}")


def reading_order(lines: Sequence[OcrLine]) -> list[list[OcrLine]]:
    """Group lines into rows in reading order, columns first (a recursive XY-cut).

    A region is cut at its widest vertical gap when that gap is at least ``1.5`` median line heights wide and
    each side holds lines of more than one row (a sidebar beside the content: read the whole sidebar, then the
    content); otherwise at every horizontal gap (rows, top to bottom). A region that cannot be cut is one row,
    read left to right. (Nagy & Seth 1984, "Hierarchical representation of optically scanned documents".)

    Args:
        lines: lines with boxes in one picture's pixel coordinates.

    Returns:
        Rows in reading order; each row's lines left to right.
    """
    if not lines:
        return []
    median_height = float(np.median([max(1, line.height) for line in lines]))
    rows: list[list[OcrLine]] = []
    _cut(list(lines), 1.5 * median_height, rows, depth=0)
    return rows


def ocr_text(lines: Sequence[OcrLine]) -> str:
    """The text of ``lines`` in reading order: a row's lines joined by a space, rows by ``\\n``."""
    return "\n".join(" ".join(line.text for line in row) for row in reading_order(lines))


def _cut(lines: list[OcrLine], column_gap: float, rows: list[list[OcrLine]], depth: int) -> None:
    if len(lines) == 1 or depth > 64:
        rows.append(sorted(lines, key=lambda line: line.box[0]))
        return
    columns = _bands(lines, axis=0)
    if len(columns) > 1:
        widest = max(range(1, len(columns)), key=lambda i: _gap(columns, i, 0))
        if _gap(columns, widest, 0) >= column_gap:
            left = [line for band in columns[:widest] for line in band]
            right = [line for band in columns[widest:] for line in band]
            if len(_bands(left, axis=1)) > 1 and len(_bands(right, axis=1)) > 1:
                _cut(left, column_gap, rows, depth + 1)
                _cut(right, column_gap, rows, depth + 1)
                return
    bands = _bands(lines, axis=1)
    if len(bands) == 1:
        rows.append(sorted(lines, key=lambda line: line.box[0]))
        return
    for band in bands:
        _cut(band, column_gap, rows, depth + 1)


def _bands(lines: list[OcrLine], axis: int) -> list[list[OcrLine]]:
    """Lines grouped by overlapping extents along ``axis`` (0: x, 1: y), in increasing order.

    Along y, two lines overlap only when they share more than half of the shorter one's height (so the slight
    overlap of consecutive text lines' boxes does not merge them).
    """
    low, high = (0, 2) if axis == 0 else (1, 3)
    ordered = sorted(lines, key=lambda line: (line.box[low], line.box[high]))
    bands: list[list[OcrLine]] = []
    end = None
    for line in ordered:
        slack = 0.0 if axis == 0 else 0.5 * min(line.height, bands[-1][-1].height) if bands else 0.0
        if bands and end is not None and line.box[low] < end - slack:
            bands[-1].append(line)
            end = max(end, line.box[high])
        else:
            bands.append([line])
            end = line.box[high]
    return bands


def _gap(bands: list[list[OcrLine]], index: int, axis: int) -> float:
    low, high = (0, 2) if axis == 0 else (1, 3)
    return min(line.box[low] for line in bands[index]) - max(line.box[high] for line in bands[index - 1])


def _clip(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    left, top = min(max(0, box[0]), width), min(max(0, box[1]), height)
    return left, top, max(left, min(box[2], width)), max(top, min(box[3], height))
