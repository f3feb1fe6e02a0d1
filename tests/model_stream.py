"""One scenario every model's server test runs: a real peer watches the mouth while the
avatar rests, speaks a TTS sentence, and rests again."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from conftest import RunningServer
from livepeer import AudioSample, LivePeer, VideoSample

SPEECH_RMS = 0.02
QUIET_S = 0.5  # seconds of nothing left to say that end a reply
IDLE_FRAMES = 64  # the avatar's idle loop is compared over this many frames
TEXT = (
    "Hello there. This is a longer test of lip sync, with a second sentence to say. A slow model on a "
    "busy machine needs a while before its first pictures are shown, so here is a third sentence. "
    "And a fourth one, to be sure that there is time. The watch stops once the mouth has moved. "
    "On a machine shared with other busy programs that can take a while, so the avatar goes on "
    "talking for some time. It tells of the weather, which is fine today, and of the sea, which "
    "is calm. Then it counts: one, two, three, four, five, six, seven, eight, nine and ten."
)
MOVED = 20  # mean difference from the photo's mouth that a model's mouth makes
MIN_WATCH_S = 3.0  # seconds of speech watched at least (the frame rate is measured over them)


@dataclass
class Watched:
    rest_changes: list[float]  # mean difference from the photo's mouth of each frame at rest
    speech_changes: list[float]  # ... of each frame while the sentence played
    speech_video: list[VideoSample]
    audio: list[AudioSample]  # from the request on

    @property
    def speech_fps(self) -> float:
        frames = self.speech_video
        return (len(frames) - 1) / (frames[-1].arrival - frames[0].arrival)


def difference(crop: np.ndarray, rests: list[np.ndarray]) -> float:
    """How far a received mouth is from the nearest of the avatar's own (idle) mouths."""
    return min(float(np.abs(crop.astype(np.int16) - rest.astype(np.int16)).mean()) for rest in rests)


def watch_speech(srv: RunningServer, box: tuple[int, int, int, int], text: str = TEXT) -> Watched:
    """`box` (x1, y1, x2, y2) is the mouth region; the avatar's frames are still photos, so at
    rest the viewer should see one of them (within the codec's error) and while speaking the
    model's mouths."""
    x1, y1, x2, y2 = box
    idle = srv.live.model.renderer(0).idle_frame
    rest = list({idle(i)[y1:y2, x1:x2].tobytes(): idle(i)[y1:y2, x1:x2] for i in range(IDLE_FRAMES)}.values())

    async def scenario() -> Watched:
        async with aiohttp.ClientSession() as http:
            peer = LivePeer(srv.url, box)
            await peer.connect(http)
            await peer.wait_for_media()
            await asyncio.sleep(2.0)  # the video encoder's bitrate (and so its quality) settles
            settled = time.monotonic()
            await asyncio.sleep(1.0)
            at_rest = [difference(v.mouth, rest) for v in peer.video_since(settled)]
            sent = time.monotonic()
            async with http.post(srv.url + "/human", json={"sessionid": peer.sessionid, "text": text}) as r:
                assert r.status == 200, await r.text()
            session = srv.live.sessions[peer.sessionid]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(a.rms > SPEECH_RMS for a in peer.audio_since(sent)):
                await asyncio.sleep(0.05)
            heard = next(a.arrival for a in peer.audio_since(sent) if a.rms > SPEECH_RMS)
            # Watched until the model's mouth has been seen for a while, or all the text has
            # been spoken and played (a busy machine can leave a pause between sentences, which
            # must not end the watch); a slow model on a busy machine shows its first frames
            # late, so the text is long and the rest is interrupted once they are seen.
            quiet = time.monotonic()
            moved: float | None = None
            while time.monotonic() < deadline and time.monotonic() - quiet < QUIET_S:
                if session.is_speaking or session.tts.is_busy or session.asr.queued_frames():
                    quiet = time.monotonic()
                if moved is None and any(difference(v.mouth, rest) > MOVED for v in peer.video_since(heard)):
                    moved = time.monotonic()
                if moved is not None and time.monotonic() > max(moved + 1.0, heard + MIN_WATCH_S):
                    quiet = time.monotonic()
                    break
                await asyncio.sleep(0.05)
            speech_video = [v for v in peer.video_since(heard) if v.arrival < quiet]
            audio = peer.audio_since(sent)
            async with http.post(srv.url + "/interrupt_talk", json={"sessionid": peer.sessionid}) as r:
                assert r.status == 200
            await peer.close()
        changes = [difference(v.mouth, rest) for v in speech_video]
        return Watched(at_rest, changes, speech_video, audio)

    return asyncio.run(scenario())


def watch_model_server(model: str, root: Path, avatar_id: str, face: tuple[int, int, int, int]) -> Watched:
    """A server of `model` on the models and avatars under `root` (models/, avatars/), watched
    over the lower half of the `face` box (x1, y1, x2, y2)."""
    srv = RunningServer([
        "--model", model, "--avatar_root", str(root / "avatars"), "--models_dir", str(root / "models"),
        "--avatar_id", avatar_id, "--max_session", "1",
    ])
    try:
        x1, y1, x2, y2 = face
        return watch_speech(srv, (x1, (y1 + y2) // 2, x2, y2))
    finally:
        srv.stop()


def assert_lip_synced_stream(watched: Watched) -> None:
    """What a viewer notices: the sound plays, the picture keeps 25 fps while it does, the
    mouth moves with the speech and not at rest."""
    assert any(a.rms > SPEECH_RMS for a in watched.audio), "no speech audio"
    assert len(watched.speech_video) > 25, "no video while speaking"
    assert watched.speech_fps >= 22, f"{watched.speech_fps:.1f} fps while speaking"
    # At rest: the photo, within VP8's error (a few levels while its bitrate ramps up). While
    # speaking: the model's mouths (random weights here: anything but the photo).
    assert max(watched.rest_changes) < 12, f"the mouth moved at rest ({max(watched.rest_changes):.2f})"
    assert max(watched.speech_changes) > MOVED, f"the mouth never moved ({max(watched.speech_changes):.2f})"
