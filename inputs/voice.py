"""One session's speech input on the event loop: the mic track in, transcripts and answers out.

    mic track -> mic_chunks -> Listener thread (VAD, utterances, barge-in)
        -> Heard items -> speech-to-text -> events on /sse -> the chat (or spoken back)

Stages overlap with the user still talking, since the silence that ends an utterance alone
takes most of the time a reply may take: partial transcripts come while they speak, at the
first moment of silence the utterance is transcribed and, in chat mode, a moment later its
answer is started and synthesised, held back until the silence is long enough to end the
utterance, or thrown away if the user goes on. Utterances are answered in order; a
speech-to-text failure is told on /sse and the next utterance is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from chat import Speculation
from inputs.listener import Heard, Listener
from inputs.mic import mic_chunks
from inputs.utterance import SegmenterConfig
from outputs.tap import Tap
from safetext import shown
from stt.base import SpeechToText, SttError
from webrtc import ClockTrack

log = logging.getLogger(__name__)

MODES = ("chat", "echo", "off")
MAX_WAITING = 3  # utterances waiting for speech-to-text; more and the oldest is dropped
CLOSE_WAIT_S = 5.0


@dataclass
class Hooks:
    """What the input may do to its session (app.py wires them)."""

    interrupt: Callable[[], Awaitable[None]]  # silence the avatar and stop its answer
    say: Callable[[str, dict], None]  # speak text as it is (echo mode)
    ask: Callable[[str, dict], Awaitable[None]]  # ask the chat (chat mode)
    # A held answer, expected to be released at the time.perf_counter() given; None without chat.
    speculate: Callable[[str, dict, float], Speculation | None]
    publish: Callable[[dict], None]  # an event on the session's /sse


@dataclass
class VoiceStats:
    utterances: int = 0
    transcripts: int = 0
    barge_ins: int = 0
    echo_rejected: int = 0
    stt_errors: int = 0
    speculations_used: int = 0
    speculations_dropped: int = 0


@dataclass
class _Utterance:
    number: int
    transcript: asyncio.Task | None = None  # started at the pause; a resume cancels it
    speculation: Speculation | None = None
    partial: asyncio.Task | None = None
    extra: dict = field(default_factory=dict)


class VoiceInput:
    """Listening for one session: owns its reader task, its listener thread and its
    transcriptions; `close` stops all of them."""

    def __init__(
        self,
        sessionid: int,
        stt: SpeechToText,
        hooks: Hooks,
        *,
        mode: str = "chat",
        barge_in: bool = True,
        config: SegmenterConfig | None = None,
    ) -> None:
        self.sessionid = sessionid
        self.stt = stt
        self.mode = mode
        self.fields: dict[str, Any] = {}  # the client's fields, echoed in listening/transcript events
        self.stats = VoiceStats()
        self._hooks = hooks
        self._barge_in = barge_in
        self._config = config or SegmenterConfig()
        self._loop = asyncio.get_running_loop()
        self._listener: Listener | None = None
        self._reader: asyncio.Task | None = None
        self._sent: ClockTrack | None = None
        self._current: _Utterance | None = None
        self._finals: list[asyncio.Task] = []  # utterances being finished, in order
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # --- control -------------------------------------------------------------------------------
    def attach(self, track: MediaStreamTrack, sent: ClockTrack) -> None:
        """Listen to the peer's microphone `track` (one per session; a second replaces it);
        `sent` is the audio track the peer hears, whose echo the mic may carry."""
        if self._closed:
            return
        self._sent = sent
        if self._reader is not None:
            self._reader.cancel()
        self._reader = self._loop.create_task(self._read(track), name=f"mic-{self.sessionid}")

    def set_mode(self, mode: str, fields: dict[str, Any] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.mode = mode
        if fields is not None:
            self.fields = dict(fields)
        if mode == "off" and self._current is not None:
            self._drop_speculation(self._current)  # nobody listens to the rest of it
            self._current = None
        if self._listener is not None:
            self._listener.active = mode != "off"
        log.info("session %s: speech input mode %s", self.sessionid, mode)

    async def close(self) -> None:
        """Stop reading, listening and transcribing; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._current is not None:
            self._drop_speculation(self._current)
        tasks = [t for t in (self._reader, *self._finals, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        if self._sent is not None:
            self._sent.sent = None  # the peer's track stops copying its sound for the guard
        if self._listener is not None:
            await self._loop.run_in_executor(None, self._listener.close)
            self.stats.echo_rejected = self._listener.echo_rejected

    def describe(self) -> dict[str, Any]:
        listener = self._listener
        return {
            "mode": self.mode,
            "hearing": listener is not None,
            "mic_dropped": listener.dropped if listener else 0,
            **vars(self.stats),
            "echo_rejected": listener.echo_rejected if listener else self.stats.echo_rejected,
        }

    # --- the mic ----------------------------------------------------------------------------------
    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            async for piece in mic_chunks(track):
                if self._listener is None:
                    self._start_listener()
                self._listener.put(piece)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: the microphone track failed; speech input stops", self.sessionid)
            self._hooks.publish({**self.fields, "status": "error", "source": "asr",
                                 "msg": "the microphone track failed; speech input stopped"})
        else:
            log.info("session %s: the microphone track ended", self.sessionid)

    def _start_listener(self) -> None:
        # The reference is taken only once the mic sends: the peer hears the sound by then.
        reference = Tap(f"echo-reference-{self.sessionid}", video=False, limit=100)
        self._sent.sent = reference
        self._listener = Listener(
            f"listen-{self.sessionid}", self._from_thread, config=self._config,
            barge_in=self._barge_in, reference=reference,
        )
        self._listener.active = self.mode != "off"
        log.info("session %s: hearing the microphone", self.sessionid)

    def _from_thread(self, heard: Heard) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_heard, heard)

    # --- what was heard (event loop) -----------------------------------------------------------
    def _on_heard(self, heard: Heard) -> None:
        log.debug("session %s: heard %s of utterance %d (%.2f s)", self.sessionid, heard.kind, heard.utterance,
                  heard.audio.size / 16000)
        if self._closed:
            return
        current = self._current if self._current and self._current.number == heard.utterance else None
        if heard.kind == "listening":
            self._current = _Utterance(heard.utterance, extra=dict(self.fields))
            self.stats.utterances += 1
            self._hooks.publish({**self.fields, "status": "listening"})
        elif heard.kind == "barge_in":
            self.stats.barge_ins += 1
            log.info("session %s: barge-in: the user talks over the avatar", self.sessionid)
            self._spawn(self._hooks.interrupt())
            self._hooks.publish({**self.fields, "status": "barge_in"})
        elif heard.kind == "echo":
            log.debug("session %s: the avatar's own voice came back through the mic", self.sessionid)
        elif current is None:
            return  # an utterance already given up
        elif heard.kind == "partial":
            if self.stt.partials and (current.partial is None or current.partial.done()):
                current.partial = self._spawn(self._partial(current, heard))
        elif heard.kind == "pause":
            current.transcript = self._spawn(self._transcribe(heard))
        elif heard.kind == "speculate":
            if self.mode == "chat" and current.transcript is not None:
                # Unless the user goes on, the utterance ends (and its answer is heard) once the
                # silence has lasted end_silence_s.
                release_at = time.perf_counter() + self._config.end_silence_s - self._config.speculate_s
                self._spawn(self._speculate(current, release_at))
        elif heard.kind == "resume":
            self._drop_speculation(current)
        elif heard.kind == "end":
            if not heard.cut:
                self._current = None
            self._finish(current, heard)

    def _spawn(self, coro) -> asyncio.Task:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _transcribe(self, heard: Heard, partial: bool = False) -> str:
        started = time.perf_counter()
        text = await self.stt.transcribe(heard.audio, partial=partial)
        log.debug("session %s: %.1f s of speech transcribed in %.0f ms%s", self.sessionid, heard.audio.size / 16000,
                  1000 * (time.perf_counter() - started), " (partial)" if partial else "")
        return text

    async def _partial(self, utterance: _Utterance, heard: Heard) -> None:
        try:
            text = await self._transcribe(heard, partial=True)
        except SttError:
            return  # the final transcript tells the user, once
        if text and self._current is utterance and utterance.transcript is None:
            self._hooks.publish({**utterance.extra, "status": "transcript", "text": text, "final": False})

    async def _speculate(self, utterance: _Utterance, release_at: float) -> None:
        task = utterance.transcript
        try:
            text = await asyncio.shield(task)
        except (SttError, asyncio.CancelledError):
            return
        if text and utterance.transcript is task and self.mode == "chat" and self._current is utterance:
            utterance.speculation = self._hooks.speculate(text, utterance.extra, release_at)

    def _drop_speculation(self, utterance: _Utterance) -> None:
        if utterance.transcript is not None:
            utterance.transcript.cancel()
            utterance.transcript = None
        if utterance.speculation is not None:
            self.stats.speculations_dropped += 1
            self._withdraw(utterance)

    def _withdraw(self, utterance: _Utterance) -> None:
        # Its speech is dropped now, even if the task closing its stream never gets to run.
        speculation, utterance.speculation = utterance.speculation, None
        speculation.drop_speech()
        self._spawn(speculation.withdraw())

    def _finish(self, utterance: _Utterance, heard: Heard) -> None:
        waiting = [t for t in self._finals if not t.done()]
        if len(waiting) >= MAX_WAITING:
            waiting[0].cancel()
            self._hooks.publish({**utterance.extra, "status": "error", "source": "asr",
                                 "msg": "speech-to-text is behind: an earlier utterance was dropped"})
        previous = waiting[-1] if waiting else None
        transcript = utterance.transcript if not heard.cut else None
        if heard.cut:
            self._drop_speculation(utterance)
        task = self._loop.create_task(self._final(utterance, heard, transcript, previous),
                                      name=f"utterance-{self.sessionid}")
        self._finals.append(task)
        task.add_done_callback(self._finals.remove)

    async def _final(self, utterance: _Utterance, heard: Heard, transcript: asyncio.Task | None,
                     previous: asyncio.Task | None) -> None:
        extra = utterance.extra
        try:
            text = await transcript if transcript is not None else await self._transcribe(heard)
        except asyncio.CancelledError:
            if utterance.speculation is not None:  # dropped (speech-to-text behind) or closing
                self._withdraw(utterance)
            raise
        except SttError as exc:
            self.stats.stt_errors += 1
            log.warning("session %s: speech-to-text failed: %s", self.sessionid, exc.msg)
            self._hooks.publish({**extra, "status": "error", "source": "asr", "msg": exc.msg})
            self._hooks.publish({**extra, "status": "transcript", "text": "", "final": True})
            if utterance.speculation is not None:
                await utterance.speculation.withdraw()
            return
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous  # answers go in the order the questions were asked
        self.stats.transcripts += bool(text)
        log.info("session %s: heard %s", self.sessionid, shown(text, 120) if text else "nothing")
        self._hooks.publish({**extra, "status": "transcript", "text": text, "final": True})
        speculation, utterance.speculation = utterance.speculation, None
        if not text or self.mode == "off":
            if speculation is not None:
                await speculation.withdraw()
            return
        if self.mode == "echo":
            if speculation is not None:
                await speculation.withdraw()
            self._hooks.say(text, extra)
            return
        if speculation is not None and speculation.release():
            self.stats.speculations_used += 1
            return
        await self._hooks.ask(text, extra)
