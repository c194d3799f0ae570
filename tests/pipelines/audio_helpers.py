"""Helpers shared by the audio tests (``test_audio``, ``test_asr``): the example recordings of ``examples/audio``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.extract.audio import decode_audio

#: The folder of the example recordings (see ``examples/README.md``).
AUDIO = Path(__file__).resolve().parents[2] / "examples" / "audio"
#: Recordings of speech.
SPEECH = ["maintenance-notice.wav", "safety-briefing.wav"]
#: A plucked string: sound, but no speech.
NO_SPEECH = "pluck-no-speech.wav"


def example_samples(name: str) -> np.ndarray:
    """The decoded samples of an example recording: ``float32``, shape ``(n,)``, 16 kHz mono."""
    return decode_audio((AUDIO / name).read_bytes(), name).samples
