"""Talking to the avatar: a real aiortc client sends espeak-ng speech as its microphone, at the
pace of real time, to a real server with the real whisper tiny.en model; the transcript, the
chat's answer, barge-in, the avatar's own voice coming back, and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import aiohttp
import numpy as np
import pytest
from mic_tracks import LoopbackTrack, SpeechTrack

from conftest import RunningServer, llm_server
from fakellm import FakeLLM, Script
from livepeer import LivePeer
from portrait_geometry import sway_box
from speech_samples import espeak_speech, word_error_rate, words
from sseclient import SseClient

QUESTION = "What is the capital of France?"
ANSWER = ["Paris", " is", " the", " capital", " of", " France."]
LONG_TEXT = ("This is a long answer that keeps the avatar talking for a good while, so that the user "
             "has time to talk over it. It goes on and on, one sentence after another, about nothing at all.")
LOUD = 0.02


@pytest.fixture(scope="module")
def voice_server(fake_llm: FakeLLM) -> Iterator[RunningServer]:
    srv = llm_server(fake_llm.url)
    yield srv
    srv.stop()


@contextlib.asynccontextmanager
async def talking_peer(srv: RunningServer, mic, **offer):
    async with aiohttp.ClientSession() as http:
        peer = LivePeer(srv.url, sway_box(), mic=mic, offer_fields=offer, audio_prefetch=0)
        answer = await peer.connect(http)
        sse = SseClient(f"{srv.url}/sse?sessionid={peer.sessionid}")
        await sse.connect(http)
        try:
            await peer.wait_for_media()
            yield http, peer, sse, answer
        finally:
            await sse.close()
            await peer.close()


def loud_after(peer: LivePeer, t: float) -> list[float]:
    return [a.arrival for a in peer.audio_since(t) if a.rms > LOUD]


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def test_a_spoken_question_is_transcribed_answered_and_spoken(voice_server, fake_llm):
    fake_llm.script(Script(chunks=ANSWER, interval=0.03))

    async def scenario():
        mic = SpeechTrack()
        async with talking_peer(voice_server, mic) as (http, peer, sse, answer):
            assert answer["asr"] == {"engine": "whisper", "mode": "chat", "barge_in": True}
            async with http.post(f"{voice_server.url}/asr_mode",
                                 json={"sessionid": peer.sessionid, "mode": "chat", "turn": 7}) as resp:
                assert (await resp.json())["code"] == 0
            mic.say(espeak_speech(QUESTION))
            final = await sse.wait_for(lambda e: e["status"] == "transcript" and e["final"], 30)
            start = await sse.wait_for(lambda e: e["status"] == "start", 30)
            await sse.wait_for(lambda e: e["status"] == "end" and e["text"].endswith("France."), 30)
            heard = loud_after(peer, start["_at"] - 0.5)
            replied = voice_server.live.sessions[peer.sessionid].last_reply_latency_s
            return sse.events, final, heard, voice_server.live.inputs[peer.sessionid].describe(), replied

    events, final, heard, stats, replied = asyncio.run(scenario())
    # The admin's "time to first audio of the last reply" counts from the question heard.
    assert replied is not None and replied > 0
    kinds = [e["status"] for e in events]
    assert kinds.index("listening") < kinds.index("transcript")
    listening = next(e for e in events if e["status"] == "listening")
    assert listening["turn"] == 7 and final["turn"] == 7  # the client's fields come back
    assert word_error_rate(QUESTION, final["text"]) <= 0.34, final["text"]
    # The stand-in LLM was asked exactly what was heard, and its answer was spoken.
    assert fake_llm.requests[-1]["messages"][-1] == {"role": "user", "content": final["text"]}
    assert any(e["status"] == "start" and "Paris" in e["text"] for e in events)
    assert len(heard) > 50, "the answer was not heard"
    assert stats["utterances"] == 1 and stats["transcripts"] == 1 and stats["barge_ins"] == 0


def test_an_answer_started_at_a_pause_is_dropped_when_the_user_goes_on(fake_llm):
    # The answer to what was said before the pause is started and synthesised at once, held
    # back, and thrown away when the question goes on; only the whole question is answered.
    def respond(question: str) -> str:
        return "Withdrawn answer." if len(words(question)) <= 4 else "Here is one, about a cat."

    fake_llm.default = Script(respond=respond)
    srv = llm_server(fake_llm.url, "--asr_silence_ms", "1500")  # a pause of 0.9 s does not end it
    question = np.concatenate([espeak_speech("Tell me a joke"), np.zeros(14400, np.float32),
                               espeak_speech("about a cat.")])

    async def scenario():
        mic = SpeechTrack()
        async with talking_peer(srv, mic, asr_mode="chat") as (_, peer, sse, _):
            mic.say(question)
            final = await sse.wait_for(lambda e: e["status"] == "transcript" and e["final"], 30)
            await sse.wait_for(lambda e: e["status"] == "end" and "cat" in e["text"], 30)
            await asyncio.sleep(1.0)  # what a leaked answer would need to be heard
            return final, sse.events, srv.live.inputs[peer.sessionid].describe()

    try:
        final, events, stats = asyncio.run(scenario())
    finally:
        fake_llm.default = Script()
        srv.stop()
    asked = [r["messages"][-1]["content"] for r in fake_llm.requests[-stats["speculations_dropped"] - 1 :]]
    assert stats["speculations_dropped"] >= 1 and all(len(words(q)) <= 4 for q in asked[:-1]), asked
    # The whole question was asked ("about a cat" itself is not what this test is about).
    assert words(final["text"])[:4] == ["tell", "me", "a", "joke"] and len(words(final["text"])) > 4, final
    spoken = [e["text"] for e in events if e["status"] == "start"]
    assert spoken and not any("Withdrawn" in text for text in spoken), spoken
    assert stats["speculations_used"] == 1 and stats["transcripts"] == 1


def test_echo_mode_speaks_the_transcript_back_and_a_stereo_44k_mic_works(voice_server):
    async def scenario():
        mic = SpeechTrack(rate=44100, channels=2)
        async with talking_peer(voice_server, mic, asr_mode="echo") as (_, peer, sse, answer):
            assert answer["asr"]["mode"] == "echo"
            mic.say(espeak_speech("Good morning, my friend."))
            final = await sse.wait_for(lambda e: e["status"] == "transcript" and e["final"], 30)
            await sse.wait_for(lambda e: e["status"] == "end" and e["text"].endswith(final["text"][-4:]), 30)
            return final, " ".join(e["text"] for e in sse.of("start"))

    final, spoken = asyncio.run(scenario())
    assert word_error_rate("good morning my friend", final["text"]) <= 0.34, final["text"]
    assert spoken == final["text"]  # said back, piece by piece


def test_talking_over_the_avatar_silences_it(voice_server):
    async def scenario():
        mic = SpeechTrack()
        async with talking_peer(voice_server, mic, asr_mode="echo") as (http, peer, sse, _):
            async with http.post(f"{voice_server.url}/human",
                                 json={"sessionid": peer.sessionid, "text": LONG_TEXT}) as resp:
                assert (await resp.json())["code"] == 0
            await sse.wait_for(lambda e: e["status"] == "start", 30)
            await asyncio.sleep(1.0)
            # Talk over it while it is audibly speaking (a busy machine leaves gaps between sentences).
            await wait_until(lambda: loud_after(peer, time.monotonic() - 0.2), 20, "the avatar is not speaking")
            mic.say(espeak_speech("Stop, wait a moment please.", voice="en-gb"))
            barge = await sse.wait_for(lambda e: e["status"] == "barge_in", 15)
            # Until the interruption's own transcript is spoken back (echo mode).
            again = await sse.wait_for(lambda e: e["status"] == "start" and e["_at"] > barge["_at"], 30)
            after = [t for t in loud_after(peer, barge["_at"] + 0.5) if t < again["_at"]]
            return after, barge, sse.events, voice_server.live.inputs[peer.sessionid].describe()

    after, barge, events, stats = asyncio.run(scenario())
    assert not after, f"the avatar kept talking {len(after)} packets after the barge-in"
    assert stats["barge_ins"] == 1
    # The interrupted piece ended there, and what the user said was heard.
    final = next(e for e in events if e["status"] == "transcript" and e["final"])
    assert word_error_rate("stop wait a moment please", final["text"]) <= 0.5, final["text"]


def test_the_avatars_own_voice_coming_back_through_the_mic_does_not_interrupt_it(voice_server):
    async def scenario():
        mic = LoopbackTrack(delay_s=0.25)
        async with talking_peer(voice_server, mic, asr_mode="echo") as (http, peer, sse, _):
            peer.on_audio = mic.hear
            async with http.post(f"{voice_server.url}/human",
                                 json={"sessionid": peer.sessionid, "text": LONG_TEXT}) as resp:
                assert (await resp.json())["code"] == 0
            session = voice_server.live.sessions[peer.sessionid]
            # Server-side: the avatar starts, then says the whole text without being cut.
            await wait_until(lambda: session.is_speaking, 30, "the avatar never spoke")
            quiet_since = [time.monotonic()]

            def done() -> bool:  # quiet for 2 s: the text is over (a pause between sentences is shorter)
                if session.is_speaking:
                    quiet_since[0] = time.monotonic()
                return time.monotonic() - quiet_since[0] > 2.0

            await wait_until(done, 60, "the long text was not said to its end")
            return voice_server.live.inputs[peer.sessionid].describe()

    stats = asyncio.run(scenario())
    assert stats["echo_rejected"] > 0, "the echo never reached the VAD: the test proves nothing"
    assert stats["barge_ins"] == 0 and stats["utterances"] == 0 and stats["transcripts"] == 0


def test_silence_and_noise_give_no_transcript(voice_server):
    async def scenario():
        mic = SpeechTrack(noise=0.05)
        async with talking_peer(voice_server, mic, asr_mode="echo") as (_, peer, sse, _):
            mic.say(np.zeros(16000, np.float32))
            await asyncio.sleep(4)
            return sse.events, voice_server.live.inputs[peer.sessionid].describe()

    events, stats = asyncio.run(scenario())
    assert not [e for e in events if e["status"] == "transcript" and e["text"]], events
    assert stats["hearing"] and stats["transcripts"] == 0


def test_asr_mode_refuses_bad_input(voice_server):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(voice_server.url, sway_box(), offer_fields={"asr_mode": "shout"})
            with pytest.raises(AssertionError, match="asr_mode"):
                await peer.connect(http)
            await peer.close()
            plain = LivePeer(voice_server.url, sway_box())  # an upstream page: no microphone at all
            await plain.connect(http)
            answers = []
            for body in ({"sessionid": plain.sessionid, "mode": "loud"}, {"sessionid": plain.sessionid},
                         {"sessionid": 12345, "mode": "echo"},
                         {"sessionid": plain.sessionid, "mode": "echo\nERROR forged line"},
                         {"sessionid": plain.sessionid, "mode": {"echo": True}}):
                async with http.post(f"{voice_server.url}/asr_mode", json=body) as resp:
                    answers.append((resp.status, (await resp.json())["msg"]))
            async with http.post(f"{voice_server.url}/asr_mode",
                                 json={"sessionid": plain.sessionid, "mode": "off"}) as resp:
                off = await resp.json()
            await plain.close()
            return answers, off

    answers, off = asyncio.run(scenario())
    assert answers[0][0] == 400 and "mode" in answers[0][1]
    assert answers[1][0] == 400 and "mode" in answers[1][1]
    assert answers[2][0] == 404
    assert [status for status, _ in answers[3:]] == [400, 400]
    assert all("\n" not in msg for _, msg in answers[3:]), answers
    assert off["code"] == 0 and off["data"] == {"mode": "off"}


def test_with_barge_in_off_the_mic_is_ignored_while_the_avatar_speaks():
    srv = RunningServer(["--max_session", "2", "--barge_in", "off"])
    try:
        async def scenario():
            mic = SpeechTrack()
            async with talking_peer(srv, mic) as (http, peer, sse, answer):
                assert answer["asr"] == {"engine": "whisper", "mode": "echo", "barge_in": False}
                async with http.post(f"{srv.url}/human", json={"sessionid": peer.sessionid, "text": LONG_TEXT}):
                    pass
                await sse.wait_for(lambda e: e["status"] == "start", 30)
                await asyncio.sleep(1.0)
                mic.say(espeak_speech("Stop, wait a moment please.", voice="en-gb"))
                await wait_until(lambda: mic.clips_done == 1, 15, "the mic did not finish")
                talked_over = [t for t in loud_after(peer, mic.voiced_from) if t <= mic.voiced_until + 0.5]
                # The whole text is said, to its last sentence (no interrupt cut it short).
                await sse.wait_for(lambda e: e["status"] == "end" and e["text"].endswith("nothing at all."), 60)
                await asyncio.sleep(0.5)
                return sse.events, talked_over

        events, talked_over = asyncio.run(scenario())
    finally:
        srv.stop()
    assert not [e for e in events if e["status"] in ("barge_in", "listening", "transcript")]
    assert talked_over, "the avatar was not speaking while the user talked: the test proves nothing"


def test_a_speech_to_text_server_that_is_down_is_told_and_the_session_goes_on():
    srv = RunningServer(["--max_session", "2", "--asr", "openai", "--asr_url", "http://127.0.0.1:9/v1",
                         "--asr_timeout", "2"])
    try:
        async def scenario():
            mic = SpeechTrack()
            async with talking_peer(srv, mic) as (http, peer, sse, answer):
                assert answer["asr"]["engine"] == "openai"
                for n in (1, 2):
                    mic.say(espeak_speech("Hello there."))
                    await wait_until(lambda n=n: len(sse.of("error")) >= n, 20, f"error {n} was not told")
                async with http.post(f"{srv.url}/human", json={"sessionid": peer.sessionid, "text": "Still here."}):
                    pass
                await sse.wait_for(lambda e: e["status"] == "start", 30)
                return sse.of("error"), srv.live.inputs[peer.sessionid].describe()

        errors, stats = asyncio.run(scenario())
    finally:
        srv.stop()
    assert all(e["source"] == "asr" and "unreachable" in e["msg"] for e in errors), errors
    assert stats["stt_errors"] == 2  # the second utterance was tried too
