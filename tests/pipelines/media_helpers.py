"""Helpers shared by the multimodal ingest and search tests: a text-free picture and settings with tiny models."""

from __future__ import annotations

import io

from PIL import Image


def red_square_png() -> bytes:
    """A 96×64 PNG of a red square on white: no text in it, so only the CLIP leg can find it."""
    image = Image.new("RGB", (96, 64), "white")
    image.paste((220, 20, 20), (20, 10, 76, 54))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def media_settings(make_settings, tmp_path_factory, **overrides):
    """Settings with a tiny CLIP and a tiny Whisper, each built from a transformers config in a fresh folder."""
    from tests.pipelines.test_asr import build_tiny_whisper
    from tests.pipelines.test_image import build_tiny_clip

    clip = build_tiny_clip(tmp_path_factory.mktemp("clip"))
    whisper = build_tiny_whisper(tmp_path_factory.mktemp("whisper"))
    return make_settings(image_model=str(clip), asr_model=str(whisper), **overrides)
