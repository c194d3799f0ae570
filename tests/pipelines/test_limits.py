"""Limits on the work one hostile file can cause (issue 12): decoded audio bytes, PDF pages, rendered pixels per
page, pages rendered for OCR, and a per-document time limit in the prepare stage.

Every hostile file is built here: multi-channel 192 kHz FLAC silence (a few KiB on disk, hundreds of MB decoded),
PDFs with too many pages, a huge or absurdly thin MediaBox, and many scanned pages.
"""

from __future__ import annotations

import io
import re
import time
import tracemalloc

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
import soundfile as sf

from core.errors import ExtractionError
from pipelines.extract import extract_document
from pipelines.extract import audio as audio_module
from pipelines.extract.audio import AudioExtractor, StreamResampler, to_mono_16k
from pipelines.extract.pdf import RENDER_MAX_SIDE_PX, PdfExtractor
from tests.pipelines.support import PeakRss, registered_batch
from tests.pipelines.test_pdf_images import make_pdf, picture

MiB = 1024**2


# --- hostile files ------------------------------------------------------------------------------------------------


def silent_flac(*, channels: int = 8, rate: int = 192_000, seconds: int = 30, unknown_length: bool = False) -> bytes:
    """FLAC of ``seconds`` of silence; with ``unknown_length`` its STREAMINFO says the length is not known (0), as a
    streamed recording's does, so only decoding tells how long it is."""
    buffer = io.BytesIO()
    block = np.zeros((rate, channels), dtype=np.int16)
    with sf.SoundFile(buffer, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(block)
    data = bytearray(buffer.getvalue())
    if unknown_length:
        # STREAMINFO starts at byte 8 (after "fLaC" and its 4-byte block header); bytes 10..17 of it hold the rate
        # (20 bits), channels - 1 (3), bits per sample - 1 (5) and the total samples (36).
        field = int.from_bytes(data[18:26], "big")
        data[18:26] = (field & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(data)


def pdf_pages(sizes: list[tuple[float, float]], *, filled: bool = True) -> bytes:
    """A PDF made with pypdfium2: one page per ``(width, height)`` in points, each (``filled``) with a black
    rectangle over its lower left quarter and no text layer, so each is rendered for OCR."""
    document = pdfium.PdfDocument.new()
    for width, height in sizes:
        page = document.new_page(width, height)
        if filled:
            rect = pdfium_c.FPDFPageObj_CreateNewRect(0, 0, width / 2, height / 2)
            pdfium_c.FPDFPageObj_SetFillColor(rect, 0, 0, 0, 255)
            pdfium_c.FPDFPath_SetDrawMode(rect, pdfium_c.FPDF_FILLMODE_ALTERNATE, 0)
            pdfium_c.FPDFPage_InsertObject(page.raw, rect)
            page.gen_content()
        page.close()
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    return buffer.getvalue()


def scanned_pages(count: int) -> bytes:
    """A PDF of ``count`` pages, each a picture and no text (every one is rendered for OCR)."""
    return make_pdf([{"images": [(picture("white", (200, 200)), (72, 72, 400, 600))]} for _ in range(count)])


# --- audio ----------------------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_099, 44_100, 48_000, 192_000])
def test_stream_resampler_gives_what_resampling_the_whole_signal_gives(rate: int) -> None:
    rng = np.random.default_rng(rate)
    signal = rng.standard_normal(3 * rate + 777).astype(np.float32)
    resampler, out, start = StreamResampler(rate, block_samples=rate), [], 0  # blocks of a second: seams to cross
    while start < signal.size:
        size = int(rng.integers(1, rate))
        out += resampler.push(signal[start : start + size])
        start += size
    out += resampler.finish()
    whole = to_mono_16k(signal, rate)
    streamed = np.concatenate(out)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


@pytest.mark.unit
def test_a_rate_sharing_no_factor_with_16k_is_resampled_in_few_large_blocks(monkeypatch) -> None:
    """44,099 Hz needs a filter ten times longer than a second of input; a filter is designed per block, so a
    minute of it must take one or two blocks, not sixty (which took 0.47 s of CPU per second of audio)."""
    import scipy.signal

    calls = []
    real = scipy.signal.resample_poly
    monkeypatch.setattr(scipy.signal, "resample_poly", lambda x, up, down: calls.append(x.size) or real(x, up, down))
    resampler, out = StreamResampler(44_099), []
    signal = np.zeros(60 * 44_099, np.float32)
    for start in range(0, signal.size, 2**20):
        out += resampler.push(signal[start : start + 2**20])
    out += resampler.finish()
    assert sum(o.size for o in out) == 60 * 16_000
    assert len(calls) <= 2, calls


@pytest.mark.unit
@pytest.mark.parametrize("rate", [1, 999, 384_001])
def test_a_sample_rate_no_recording_has_is_refused_before_decoding(rate: int) -> None:
    """A 5 KB WAV at 1 Hz would need a 320,000-tap filter per input sample: minutes for a few kilobytes."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(2_500, dtype=np.int16), rate, format="WAV", subtype="PCM_16")
    with pytest.raises(ExtractionError) as caught:
        AudioExtractor().extract(buffer.getvalue(), "slow.wav")
    assert caught.value.reason == "audio_corrupt" and f"{rate} Hz" in caught.value.detail, caught.value


@pytest.mark.unit
def test_audio_decoded_in_small_blocks_equals_the_whole_file(monkeypatch) -> None:
    rate = 44_100
    t = np.arange(4 * rate) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, stereo, rate, format="FLAC", subtype="PCM_24")
    reference, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32", always_2d=True)
    monkeypatch.setattr(audio_module, "BLOCK_BYTES", 8 * 1000)  # 1000 frames a block: 177 blocks
    audio = AudioExtractor().extract(buffer.getvalue(), "tones.flac")
    assert audio.decoder == "soundfile" and audio.source_channels == 2
    np.testing.assert_allclose(audio.samples, to_mono_16k(reference, rate), atol=1e-4)


@pytest.mark.unit
def test_multichannel_high_rate_silence_is_refused_from_its_header_fast_and_small() -> None:
    data = silent_flac(seconds=30)  # 8 channels at 192 kHz: 184 MB of float32 once decoded
    decoded = 30 * 192_000 * 8 * 4
    assert len(data) < 512 * 1024 and decoded > 150 * MiB
    extractor = AudioExtractor(max_decoded_bytes=16 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(ExtractionError) as caught:
            extractor.extract(data, "silence.flac")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "audio_too_large", caught.value
    assert "8 channels at 192000 Hz" in caught.value.detail
    assert peak < 2 * MiB, peak  # nothing was decoded


@pytest.mark.unit
def test_a_header_without_a_length_still_stops_at_the_cap_while_decoding() -> None:
    data = silent_flac(seconds=30, unknown_length=True)
    decoded = 30 * 192_000 * 8 * 4
    AudioExtractor().extract(silent_flac(channels=1, rate=16_000, seconds=1), "warm.flac")  # load the decoders first
    extractor = AudioExtractor(max_decoded_bytes=16 * MiB)
    tracemalloc.start()
    try:
        with PeakRss() as rss, pytest.raises(ExtractionError) as caught:
            extractor.extract(data, "streamed.flac")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "audio_too_large", caught.value
    assert "has decoded to" in caught.value.detail  # found while decoding, not from the header
    assert peak < 4 * MiB, peak
    assert rss.growth < decoded // 4, rss.growth


@pytest.mark.unit
def test_the_same_file_within_the_cap_decodes_to_16k_mono() -> None:
    audio = AudioExtractor(max_decoded_bytes=64 * MiB).extract(silent_flac(seconds=5), "short.flac")
    assert audio.samples.shape == (5 * 16_000,) and audio.source_channels == 8 and audio.source_rate == 192_000
    assert float(np.abs(audio.samples).max()) == 0.0


@pytest.mark.unit
def test_audio_past_its_deadline_fails_with_timeout() -> None:
    data = silent_flac(channels=2, rate=48_000, seconds=20)
    with pytest.raises(ExtractionError) as caught:
        AudioExtractor().extract(data, "late.flac", deadline=time.monotonic() - 1.0)
    assert caught.value.reason == "timeout"


# --- PDF ------------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_pdf_with_more_pages_than_the_cap_is_refused_before_any_page_is_read(monkeypatch) -> None:
    data = pdf_pages([(612, 792)] * 6, filled=False)
    with pytest.raises(ExtractionError) as caught:
        PdfExtractor(max_pages=5).extract_content(data, "six.pdf")
    assert caught.value.reason == "too_many_pages" and "6 pages" in caught.value.detail
    with pytest.raises(ExtractionError) as caught:  # within the cap: read, and found to have no text
        PdfExtractor(max_pages=6).extract_content(data, "six.pdf")
    assert caught.value.reason == "pdf_no_text"

    big = pdf_pages([(612, 792)] * 2001, filled=False)

    def no_page_read(self, *args, **kwargs):
        raise AssertionError("a page was read")

    monkeypatch.setattr(pdfium.PdfDocument, "__getitem__", no_page_read)
    with pytest.raises(ExtractionError) as caught:
        extract_document(big, "big.pdf")  # the default cap, 2000
    assert caught.value.reason == "too_many_pages"
    with pytest.raises(ExtractionError) as caught:
        PdfExtractor(max_pages=5).extract(data, "six.pdf")
    assert caught.value.reason == "too_many_pages"


@pytest.mark.unit
def test_a_page_with_a_huge_mediabox_is_rendered_scaled_within_the_pixel_cap() -> None:
    data = pdf_pages([(200_000, 200_000), (612, 792)])
    content = PdfExtractor(max_render_pixels=250_000).extract_content(data, "huge.pdf")
    assert content.ocr_pages == [1, 2]
    for item in content.images:
        assert item.width * item.height <= 250_000, (item.width, item.height)
        assert item.width * item.height >= 200_000, (item.width, item.height)  # scaled to fit, not to a sliver
    assert (content.images[0].width, content.images[0].height) in ((499, 499), (500, 500))
    assert content.images[0].page_box == (0.0, 0.0, 200_000.0, 200_000.0)
    default = PdfExtractor().extract_content(data, "huge.pdf")
    assert all(max(i.width, i.height) <= RENDER_MAX_SIDE_PX and i.width * i.height <= 4_000_000 for i in default.images)
    # the black quarter is still there, at the bottom left
    pixels = np.asarray(content.images[0].pixels())
    assert pixels[-10, 10].max() < 50 and pixels[10, -10].min() > 200


@pytest.mark.unit
def test_a_page_of_absurd_proportions_fails_with_page_too_large() -> None:
    data = pdf_pages([(612, 792), (100_000, 10)])
    with pytest.raises(ExtractionError) as caught:
        PdfExtractor().extract_content(data, "ribbon.pdf")
    assert caught.value.reason == "page_too_large" and "page 2" in caught.value.detail


@pytest.mark.unit
def test_more_scanned_pages_than_the_ocr_cap_fail_before_the_first_render(monkeypatch) -> None:
    data = scanned_pages(4)
    content = PdfExtractor(max_ocr_pages=4).extract_content(data, "four.pdf")
    assert content.ocr_pages == [1, 2, 3, 4]

    def no_render(self, *args, **kwargs):
        raise AssertionError("a page was rendered")

    monkeypatch.setattr(pdfium.PdfPage, "render", no_render)
    with pytest.raises(ExtractionError) as caught:
        PdfExtractor(max_ocr_pages=3).extract_content(data, "four.pdf")
    assert caught.value.reason == "too_many_ocr_pages" and "4 or more pages" in caught.value.detail


@pytest.mark.unit
def test_the_ocr_cap_also_holds_for_pages_found_to_be_scans_while_rendering() -> None:
    # A stamped page number on each scan: not counted up front (it has text), found to be a scan page by page.
    stamped = [{"lines": ["12"], "images": [(picture("grey", (300, 400)), (0, 0, 612, 792))]} for _ in range(3)]
    with pytest.raises(ExtractionError) as caught:
        PdfExtractor(max_ocr_pages=2).extract_content(make_pdf(stamped), "stamped.pdf")
    assert caught.value.reason == "too_many_ocr_pages"
    assert len(PdfExtractor(max_ocr_pages=3).extract_content(make_pdf(stamped), "stamped.pdf").ocr_pages) == 3


@pytest.mark.unit
def test_a_pdf_past_its_deadline_stops_between_pages() -> None:
    data = scanned_pages(150)  # about 50 ms a render: 7 s or more in all
    with pytest.raises(ExtractionError) as caught:
        PdfExtractor().extract_content(data, "slow.pdf", deadline=time.monotonic() + 0.5)
    assert caught.value.reason == "timeout"
    stopped_at, pages = _stopped_at(caught.value.detail)
    assert pages == 150 and stopped_at < pages, caught.value.detail  # it stopped between pages, not after them


def _stopped_at(detail: str) -> tuple[int, int]:
    """``(page, pages)`` from a ``timeout`` detail that names the page it stopped at (``... page 12 of 150``)."""
    found = re.search(r"page (\d+) of (\d+)", detail)
    assert found, detail
    return int(found.group(1)), int(found.group(2))


# --- the prepare stage: one slow document fails alone -------------------------------------------------------------


@pytest.mark.integration
def test_a_document_past_the_timeout_fails_alone_and_the_batch_goes_on(settings) -> None:
    from pipelines import columns as C
    from pipelines.prepare import PrepareStage

    settings = settings.model_copy(update={"document_timeout_s": 2.0, "max_ocr_pages": 1000})
    stage = PrepareStage(settings)
    good = b"Sluice indexes documents.\n\nThis note is short and is indexed at once.\n"
    stage(registered_batch(settings, "limits", {"warm.txt": good}))  # the first document pays the lazy imports
    files = {"before.txt": good, "slow.pdf": scanned_pages(400), "after.md": b"# After\n\nIndexed too.\n"}
    out = stage(registered_batch(settings, "limits", files))
    outcome: dict[str, set] = {}
    for path, reason, kind in zip(out[C.PATH], out[C.ERROR_REASON], out[C.KIND]):
        outcome.setdefault(path, set()).add(reason or f"row:{kind or 'text'}")
    assert outcome["slow.pdf"] == {"timeout"}, outcome
    assert outcome["before.txt"] == {"row:text"} and outcome["after.md"] == {"row:text"}, outcome
    detail = out[C.ERROR_DETAIL][list(out[C.PATH]).index("slow.pdf")]
    assert "SLUICE_DOCUMENT_TIMEOUT_S" in detail
    stopped_at, pages = _stopped_at(detail)
    assert pages == 400 and stopped_at < pages, detail  # 400 renders would take 20 s or more
