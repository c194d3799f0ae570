"""Multimodal throughput: images/s and PDF pages/s through the image stage on Ray, beside the same models in one
plain process on the same inputs (the limit); audio figures from ``benchmarks/multimodal_audio.py`` when present.

The image work of one document: decode (``pipelines.extract``), lay out its chunks (whole picture and tiles), OCR
each picture once (``pipelines.ocr``, RapidOCR by default), and embed every chunk's pixels with the CLIP model
(``pipelines.embed.image``). A PDF also has its text layer extracted and its pages without one rendered.

* pipeline: the documents as a Ray Data dataset, that work in ``map_batches`` on an actor pool (one actor per
  ``--cpus-per-actor`` CPUs, each loading OCR and CLIP once), as the ingest's image pool runs it;
* plain: the same work in a loop in this process, with all cores given to onnxruntime and torch.

Inputs: the images of ``examples/images`` (repeated ``--repeat`` times); PDFs: ``examples/pdf``'s text PDF and a
scanned PDF made here from the example images (one page each, no text layer). The CLIP model is
``SLUICE_IMAGE_MODEL`` or ``--image-model``; without one (no CLIP weights ship offline), a tiny random CLIP built
here, and the JSON says so. Prints one JSON line.

    python benchmarks/multimodal_throughput.py [--repeat 3] [--ocr rapidocr|tesseract|none] [--no-ray]
    python benchmarks/multimodal_throughput.py --ocr-compare   # RapidOCR against Tesseract, per image
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def audio_figures() -> dict | None:
    """Audio seconds transcribed per second (pipeline and plain), from ``benchmarks.multimodal_audio``.

    That module (the audio half of the issue) provides ``audio_figures() -> dict``; ``None`` while it is absent.
    """
    try:
        module = importlib.import_module("benchmarks.multimodal_audio")
    except ModuleNotFoundError:
        return None
    return module.audio_figures()


def inputs(repeat: int) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """``(images, pdfs)``: ``(path, bytes)`` pairs."""
    from PIL import Image

    pictures = sorted((ROOT / "examples" / "images").glob("*.png"))
    images = [(f"{i}/{p.name}", p.read_bytes()) for i in range(repeat) for p in pictures]
    pdfs = [(f"{i}/{p.name}", p.read_bytes()) for i in range(repeat) for p in sorted((ROOT / "examples" / "pdf").glob("*.pdf"))]
    for i in range(repeat):
        for p in pictures:
            buffer = io.BytesIO()
            Image.open(p).convert("RGB").save(buffer, format="PDF", resolution=200)
            pdfs.append((f"{i}/scan-{p.stem}.pdf", buffer.getvalue()))
    return images, pdfs


class ImageWork:
    """The image work of documents (decode, chunk layout, OCR, CLIP); a Ray Data callable class too."""

    def __init__(self, model: str, ocr: str, threads: int | None) -> None:
        from pipelines.chunk.image import ImageChunker
        from pipelines.embed.image import ClipEncoder
        from pipelines.ocr import make_ocr

        kwargs = {"num_threads": threads} if ocr == "rapidocr" and threads else {}
        self.chunker = ImageChunker(make_ocr(ocr, **kwargs))
        self.encoder = ClipEncoder(model, device=None, batch_size=16, num_threads=threads)
        self.encoder.warm_up()

    def document(self, path: str, data: bytes) -> dict:
        """Process one document; returns its counts (pages for a PDF, pictures, chunks)."""
        from pipelines.chunk.image import crop
        from pipelines.extract import extract_document

        extracted = extract_document(data, path)
        chunks = self.chunker.chunk(extracted.images, first_index=len(extracted.sections))
        by_index = {item.index: item for item in extracted.images}
        self.encoder.encode_images([crop(by_index[c.item_index].image, c) for c in chunks])
        pages = _page_count(data) if extracted.content_type == "application/pdf" else 0
        return {"pages": pages, "pictures": len(extracted.images), "chunks": len(chunks)}

    def __call__(self, batch: dict) -> dict:
        rows = [self.document(str(p), bytes(d)) for p, d in zip(batch["path"], batch["data"])]
        return {key: [row[key] for row in rows] for key in ("pages", "pictures", "chunks")}


def _page_count(data: bytes) -> int:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(data)
    try:
        return len(document)
    finally:
        document.close()


def plain(work: ImageWork, documents: list[tuple[str, bytes]]) -> tuple[float, dict]:
    started = time.perf_counter()
    totals = {"pages": 0, "pictures": 0, "chunks": 0}
    for path, data in documents:
        for key, value in work.document(path, data).items():
            totals[key] += value
    return time.perf_counter() - started, totals


def on_ray(model: str, ocr: str, documents: list[tuple[str, bytes]], cpus_per_actor: int) -> tuple[float, dict]:
    import ray

    cpus = os.cpu_count() or 1
    actors = max(1, cpus // cpus_per_actor)
    ds = ray.data.from_items([{"path": p, "data": d} for p, d in documents], override_num_blocks=len(documents))
    ds = ds.map_batches(ImageWork, fn_constructor_args=(model, ocr, cpus_per_actor), batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor)
    started = time.perf_counter()
    rows = ds.take_all()
    seconds = time.perf_counter() - started
    return seconds, {key: sum(int(row[key]) for row in rows) for key in ("pages", "pictures", "chunks")}


def ocr_compare() -> dict:
    """Seconds and text of RapidOCR and Tesseract on each example image (for ``pipelines/ocr.py``'s choice)."""
    from pipelines.extract import extract_document
    from pipelines.ocr import make_ocr, ocr_text

    figures = {}
    for name in ("rapidocr", "tesseract"):
        try:
            engine = make_ocr(name)
        except Exception as exc:  # noqa: BLE001 - a missing engine is reported, not fatal
            figures[name] = {"error": str(exc)}
            continue
        for path in sorted((ROOT / "examples" / "images").glob("*.png")):
            image = extract_document(path.read_bytes(), path.name).images[0].pixels()
            engine.recognize(image)  # warm
            started = time.perf_counter()
            text = ocr_text(engine.recognize(image))
            figures.setdefault(name, {})[path.name] = {"seconds": round(time.perf_counter() - started, 2),
                                                       "has_add_one": "add_one" in text, "chars": len(text)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="copies of each input (default 2)")
    parser.add_argument("--ocr", default="rapidocr", choices=("rapidocr", "tesseract", "none"))
    parser.add_argument("--image-model", default=os.environ.get("SLUICE_IMAGE_MODEL", ""))
    parser.add_argument("--cpus-per-actor", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="only the plain-process figures")
    parser.add_argument("--ocr-compare", action="store_true", help="only compare the OCR engines")
    args = parser.parse_args(argv)
    if args.ocr_compare:
        print(json.dumps({"benchmark": "ocr_compare", "cpus": os.cpu_count(), **ocr_compare()}), flush=True)
        return 0

    images, pdfs = inputs(args.repeat)
    with tempfile.TemporaryDirectory(prefix="sluice-mm-") as tmp:
        model, model_note = args.image_model, args.image_model
        if not model:
            from tests.pipelines.test_image import build_tiny_clip

            model, model_note = str(build_tiny_clip(Path(tmp))), "tiny random CLIP (no CLIP weights available offline)"
        threads = os.cpu_count() or 1
        work = ImageWork(model, args.ocr, threads)
        work.document(*images[0])  # warm up both models
        plain_images_s, image_totals = plain(work, images)
        plain_pdfs_s, pdf_totals = plain(work, pdfs)
        result = {
            "benchmark": "multimodal_throughput", "cpus": threads, "ocr": args.ocr, "image_model": model_note,
            "images": len(images), "image_chunks": image_totals["chunks"], "pdf_pages": pdf_totals["pages"],
            "pdf_pictures": pdf_totals["pictures"],
            "plain_process_images_per_s": round(len(images) / plain_images_s, 3),
            "plain_process_pdf_pages_per_s": round(pdf_totals["pages"] / plain_pdfs_s, 3),
        }
        if not args.no_ray:
            import ray

            ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
            try:
                ray_images_s, _ = on_ray(model, args.ocr, images, args.cpus_per_actor)
                ray_pdfs_s, ray_pdf = on_ray(model, args.ocr, pdfs, args.cpus_per_actor)
            finally:
                ray.shutdown()
            result.update({
                "images_per_s": round(len(images) / ray_images_s, 3),
                "pdf_pages_per_s": round(ray_pdf["pages"] / ray_pdfs_s, 3),
                "images_ratio_to_plain_process": round(plain_images_s / ray_images_s, 3),
                "pdf_ratio_to_plain_process": round(plain_pdfs_s / ray_pdfs_s, 3),
                "note": "pipeline figures include the actors' model loading (OCR and CLIP once per actor)",
            })
    result["audio"] = audio_figures()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
