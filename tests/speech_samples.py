"""Real speech for the speech-input tests, and a way to score what a recogniser heard.

`espeak_speech` synthesises a sentence with espeak-ng (a formant synthesiser: robotic, but
real phonemes that any recogniser should get mostly right); `word_error_rate` compares a
transcript with the sentence the way a user would: words, not punctuation or case.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from fractions import Fraction
from functools import lru_cache

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from audio_util import SAMPLE_RATE, to_16k_mono

ESPEAK_WPM = 150  # espeak-ng's default speaking rate, near a person's


def espeak_speech(text: str, voice: str = "en-us", rate: int = SAMPLE_RATE) -> np.ndarray:
    """`text` spoken by espeak-ng as float32 mono at `rate`; made once per text, voice and rate."""
    return _speech(text, voice, rate).copy()  # a copy: callers may change their array


@lru_cache(maxsize=64)
def _speech(text: str, voice: str, rate: int) -> np.ndarray:
    handle, path = tempfile.mkstemp(suffix=".wav", prefix="espeak-")
    os.close(handle)
    try:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(ESPEAK_WPM), "-w", path, text],
            check=True, capture_output=True, timeout=30,
        )
        samples, native = sf.read(path, dtype="float32")
    finally:
        os.unlink(path)
    if rate == SAMPLE_RATE:
        return to_16k_mono(samples, native)  # the server's own resampler
    ratio = Fraction(rate, native)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation ("France?" and "france" are the same word)."""
    return re.sub(r"[^\w\s']", " ", text.lower()).replace("'", "").split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance (substitutions, insertions, deletions) over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))  # distances from an empty reference prefix
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hyp, 1):
            current.append(min(
                previous[j] + 1,  # a reference word missed
                current[j - 1] + 1,  # a word that was not said
                previous[j - 1] + (ref_word != hyp_word),  # the same word, or another one
            ))
        previous = current
    return previous[-1] / len(ref)
