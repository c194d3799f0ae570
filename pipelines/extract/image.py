"""Images: decode a PNG, JPEG, WebP, TIFF or GIF (first frame) into one upright RGB picture, or refuse it.

Input: the raw bytes of one image file (or of an image found inside a PDF). Output: an :class:`ImageItem` holding a
Pillow ``Image`` in mode ``RGB`` (8 bits per channel), turned upright by its EXIF ``Orientation`` tag (EXIF 2.32,
tag 0x0112; ``PIL.ImageOps.exif_transpose``), transparent pixels laid on white (screenshots with an alpha
channel would otherwise turn black and lose their text for OCR).

Hostile input fails with an :class:`core.errors.ExtractionError` and a stable reason code, before any pixel is
decoded where possible:

=====================  ======================================================================================
``empty_file``         0 bytes
``image_bomb``         the header claims more than ``max_pixels`` pixels (a decompression bomb: a few KiB of
                       PNG can claim 100,000 x 100,000 pixels, 40 GB of RGBA), or Pillow's own
                       ``DecompressionBombError``/``DecompressionBombWarning`` fires
``image_truncated``    the pixel data ends early (``OSError: image file is truncated``, a PNG without IEND...)
``image_corrupt``      bytes that no allowed decoder recognises, or that fail to decode (bad CRC, bad header)
``unsupported_type``   a real image in a format outside ``ALLOWED_FORMATS`` (Pillow is told not to try others)
=====================  ======================================================================================

Sources: Pillow documentation, "Image file formats" and ``Image.open`` (the ``formats`` argument, the
decompression-bomb check; ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False``, Pillow's default, or a truncated
file decodes with grey where its data is missing).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import struct
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ExtractionError

logger = logging.getLogger(__name__)

#: Pillow format names this module lets Pillow decode; any other decoder is never tried. (A JPEG with a
#: Multi-Picture segment, as phones write, opens through the JPEG plugin as format ``MPO``.)
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "GIF")
#: The default pixel limit: 64 megapixels (an 8000 x 8000 scan; 192 MiB as RGB). Pillow's own default warns at
#: 89,478,485 pixels (a quarter GiB at 3 bytes a pixel) and raises at twice that.
DEFAULT_MAX_PIXELS = 64_000_000
#: Sizes below this many pixels on a side are refused as ``image_corrupt`` only when 0; a 1x1 image is kept.
MIN_SIDE_PX = 1

ImageSource = Literal["file", "pdf_embedded", "pdf_page"]

_MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp",
                   "TIFF": "image/tiff", "GIF": "image/gif"}


@dataclasses.dataclass
class ImageItem:
    """One picture to index: a whole image file, an image embedded in a PDF page, or a rendered PDF page.

    Attributes:
        image: the picture, mode ``RGB``, upright; ``image.size`` is ``(width, height)`` in pixels.
        source: ``"file"`` (an image file), ``"pdf_embedded"`` (an image object of a PDF page) or ``"pdf_page"`` (a
            page without a text layer, rendered for OCR).
        page: the 1-based PDF page, ``None`` for an image file.
        index: 0-based position of the item within its document (page order, then drawing order on the page).
        content_type: the MIME type of the encoded original (``image/png``...; ``image/x-pdf-render`` for a
            rendered page, ``image/x-pdf-bitmap`` for a decoded PDF image object).
        page_box: for a PDF item, where it lies on the page, ``(left, bottom, right, top)`` in PDF points (1/72 in,
            origin at the bottom left of the page); ``None`` for an image file.
        frames: frames in the original (a GIF or multi-page TIFF has more than one; only the first is kept).
        orientation: the EXIF orientation that was applied (1 = already upright).
        png: the picture as PNG once :meth:`pack` dropped its pixels (``image`` is then ``None``); ``b""`` before.
        packed_size: ``(width, height)`` of a packed picture.
    """

    image: Image.Image | None
    source: ImageSource = "file"
    page: int | None = None
    index: int = 0
    content_type: str = "image/png"
    page_box: tuple[float, float, float, float] | None = None
    frames: int = 1
    orientation: int = 1
    png: bytes = b""
    packed_size: tuple[int, int] = (0, 0)

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.image.size[0] if self.image is not None else self.packed_size[0]

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.image.size[1] if self.image is not None else self.packed_size[1]

    def pixels(self) -> Image.Image:
        """The picture (``RGB``), decoded again from its PNG when the item is packed."""
        if self.image is not None:
            return self.image
        with Image.open(io.BytesIO(self.png)) as packed:
            return packed.convert("RGB")

    def pack(self) -> ImageItem:
        """This item with its pixels replaced by their PNG (:meth:`to_png_bytes`).

        A PDF holds up to 256 pictures and hundreds of scanned pages, each rendered at up to 4 M pixels (12 MB as
        ``RGB``): the PDF extractor packs each one as it comes, so a document's pictures cost their PNG size (a
        scan compresses tenfold or more) and the prepare stage, which sends PNG on, encodes nothing twice.
        """
        if self.image is None:
            return self
        return dataclasses.replace(self, image=None, png=self.to_png_bytes(), packed_size=self.image.size)

    def to_png_bytes(self, compress_level: int = 1) -> bytes:
        """The picture as PNG bytes, to pass between pipeline stages (level 1: fast, lossless, ~2x raw size less).

        Returns:
            PNG bytes that :meth:`ImageExtractor.extract` decodes back to the same pixels.
        """
        if self.image is None:
            return self.png
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", compress_level=compress_level)
        return buffer.getvalue()


class ImageExtractor:
    """Decode image bytes safely into an :class:`ImageItem`.

    Stateless apart from its limits; safe to share between threads (it never changes Pillow's global
    ``Image.MAX_IMAGE_PIXELS``: the pixel limit is checked on the header before decoding).

    Args:
        max_pixels: the most pixels (width x height of the first frame) an image may have.

    Raises:
        ValueError: ``max_pixels`` below 1.
    """

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels={max_pixels} must be at least 1")
        self.max_pixels = max_pixels

    def extract(self, data: bytes, path: str, *, source: ImageSource = "file", page: int | None = None,
                index: int = 0) -> ImageItem:
        """Decode one image.

        Args:
            data: the encoded image (PNG, JPEG, WebP, TIFF, GIF).
            path: the document's relative path (used in error details only).
            source, page, index: copied to the item (see :class:`ImageItem`).

        Returns:
            The first frame, upright, ``RGB``.

        Raises:
            ExtractionError: ``empty_file``, ``image_bomb``, ``image_truncated``, ``image_corrupt`` or
                ``unsupported_type`` (see the module docstring).
        """
        if not data:
            raise ExtractionError("empty_file", f"{path} has 0 bytes")
        with warnings.catch_warnings():
            # Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that: a bomb all the same.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = self._open(data, path)
                fmt = image.format or ""
                frames = int(getattr(image, "n_frames", 1) or 1)
                self._check_size(image.size, path)
                if fmt == "PNG":
                    _verify_png(data)
                image.load()
                orientation = _orientation(image)
                upright = ImageOps.exif_transpose(image) if orientation not in (0, 1) else image
                rgb = to_rgb(upright)
            except ExtractionError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ExtractionError("image_bomb", f"{path}: {exc}") from exc
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
                raise _decode_error(exc, path) from exc
            except MemoryError as exc:
                raise ExtractionError("image_bomb", f"{path}: decoding ran out of memory") from exc
        return ImageItem(image=rgb, source=source, page=page, index=index,
                         content_type=_MIME_BY_FORMAT.get(fmt, "image/png"), frames=frames, orientation=orientation)

    def _open(self, data: bytes, path: str) -> Image.Image:
        try:
            return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError as exc:
            try:  # a real image of a format we do not decode is "unsupported", not "corrupt"
                other = Image.open(io.BytesIO(data))
            except Exception:  # noqa: BLE001 - any failure here means the bytes are no image at all
                raise ExtractionError("image_corrupt", f"{path} is not a decodable image") from exc
            raise ExtractionError("unsupported_type", f"{path} is a {other.format} image, which is not decoded") from exc

    def _check_size(self, size: tuple[int, int], path: str) -> None:
        width, height = size
        if width < MIN_SIDE_PX or height < MIN_SIDE_PX:
            raise ExtractionError("image_corrupt", f"{path} claims a size of {width}x{height} pixels")
        if width * height > self.max_pixels:
            raise ExtractionError(
                "image_bomb",
                f"{path} claims {width}x{height} = {width * height:,} pixels, more than the limit of "
                f"{self.max_pixels:,} (a decompression bomb, or an image too large to index)",
            )


def _verify_png(data: bytes) -> None:
    """Check every PNG chunk's CRC up to ``IEND`` without decompressing (``Image.verify``): Pillow decodes a PNG
    that stops after its last image data, so a file cut before ``IEND`` would otherwise pass as whole."""
    Image.open(io.BytesIO(data), formats=("PNG",)).verify()


def _decode_error(exc: BaseException, path: str) -> ExtractionError:
    message = str(exc)
    lowered = message.lower()
    if "truncated" in lowered or isinstance(exc, EOFError) or "premature end" in lowered or "not enough" in lowered:
        return ExtractionError("image_truncated", f"{path}: the image data ends early ({message})")
    return ExtractionError("image_corrupt", f"{path}: {type(exc).__name__}: {message}")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail an otherwise good image
        logger.debug("unreadable EXIF block", exc_info=True)
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``RGB``.

    Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index) is composited on white; 16-bit and
    32-bit greyscale (``I;16``, ``I``, ``F``) is scaled from its own min..max range to 0..255 (a plain
    ``convert`` would clip it to white); ``CMYK`` and ``YCbCr`` use Pillow's conversion.

    Args:
        image: a loaded Pillow image.

    Returns:
        A new ``RGB`` image of the same size (or ``image`` itself when it is ``RGB`` already).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info or mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def decode_bitmap_array(array: np.ndarray) -> Image.Image:
    """An ``RGB`` image from a ``uint8`` array of shape ``(h, w)``, ``(h, w, 3)`` or ``(h, w, 4)`` (RGBA).

    Raises:
        ValueError: another shape or dtype.
    """
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected uint8 (h, w[, 3|4]), got {array.dtype} {array.shape}")
    mode = "L" if array.ndim == 2 else ("RGB" if array.shape[2] == 3 else "RGBA")
    return to_rgb(Image.fromarray(array, mode=mode))



#: EXIF tags of the properties (EXIF 2.32, "Tag Support Levels"): in the main IFD, and in the Exif sub-IFD.
_EXIF_IFD, _EXIF_MAKE, _EXIF_MODEL, _EXIF_DATETIME, _EXIF_DATETIME_ORIGINAL = 0x8769, 0x010F, 0x0110, 0x0132, 0x9003


def image_properties(data: bytes, item: ImageItem) -> dict:
    """What an image file says of itself: ``width``/``height`` (upright, as indexed) and, from EXIF,
    ``captured_at`` (``DateTimeOriginal``, else ``DateTime``) and ``camera`` (make and model).

    Values the file does not hold are absent; an unreadable EXIF block gives none of its fields.
    """
    import datetime as dt

    found: dict = {"width": int(item.width), "height": int(item.height)}
    try:
        exif = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS).getexif()
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001 - EXIF is optional; a broken block only loses these fields
        return found
    stamp = str(sub.get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME) or "").strip().strip("\x00")
    try:  # EXIF times are "YYYY:MM:DD HH:MM:SS" with no zone
        found["captured_at"] = dt.datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S")
    except ValueError:
        pass
    make = str(exif.get(_EXIF_MAKE) or "").strip("\x00 ")
    model = str(exif.get(_EXIF_MODEL) or "").strip("\x00 ")
    camera = model if make and model.lower().startswith(make.lower()) else " ".join(p for p in (make, model) if p)
    if camera:
        found["camera"] = camera
    return found
