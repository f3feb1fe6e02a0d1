"""`--transport virtualcam`: the avatar as a webcam, through pyvirtualcam.

There is no v4l2loopback module on a test machine, so the camera is a pyvirtualcam backend
registered here (pyvirtualcam.register_backend) that keeps the mouth of every frame it is
sent; the sound device is a stand-in sounddevice module whose stream pulls sound from the
output's callback every 20 ms, as PortAudio's thread does.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib.abc
import importlib.machinery
import platform
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import pytest
import pyvirtualcam

from conftest import ROOT, RunningServer
from outputs.base import OutputError
from outputs.player import HumanPlayer
from outputs.tap import Picture, Sound
from outputs.virtualcam import MODPROBE, SoundBuffer, VirtualCamera
from portrait_geometry import mouth_change, sway_box
from waiting import post_json, wait_until

SPEECH_RMS = 0.02 * 32768  # louder than this in 20 ms is speech (int16)
SENTENCE = "Hello, how are you?"


def run(coro):
    return asyncio.run(coro)


@dataclass
class Shot:
    at: float  # monotonic time the camera got it
    mouth: np.ndarray  # the sway box around the mouth (portrait_geometry)


class RecordingCamera:
    """A pyvirtualcam backend (its duck-typed interface) that keeps what it is sent."""

    instances: list[RecordingCamera] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw) -> None:
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "/dev/video-test"
        self.shots: list[Shot] = []
        self.closes = 0
        self.lock = threading.Lock()
        RecordingCamera.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        x1, y1, x2, y2 = sway_box()
        image = frame.reshape(self.height, self.width, 3)
        with self.lock:
            self.shots.append(Shot(time.monotonic(), image[y1:y2, x1:x2].copy()))

    def since(self, at: float) -> list[Shot]:
        with self.lock:
            return [s for s in self.shots if s.at >= at]

    def close(self) -> None:
        self.closes += 1

    def device(self) -> str:
        return self._device

    def native_fourcc(self) -> int | None:
        return None


class MissingCamera(RecordingCamera):
    """What pyvirtualcam's v4l2loopback backend does on a machine without the module."""

    def __init__(self, **kw) -> None:
        raise RuntimeError("No v4l2 loopback device found at /dev/video[0-99]. Did you run 'modprobe v4l2loopback'?")


pyvirtualcam.register_backend("test-recorder", RecordingCamera)
pyvirtualcam.register_backend("test-missing", MissingCamera)


@dataclass
class FakeStream:
    """sounddevice.RawOutputStream: a thread pulls a block from the callback every 20 ms."""

    kwargs: dict
    heard: list[tuple[float, float]] = field(default_factory=list)  # (time, rms) of each block
    started: bool = False
    closed: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.started = True
        self._thread = threading.Thread(target=self._play, name="fake-portaudio", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        frames = self.kwargs["blocksize"]
        next_at = time.monotonic()
        while not self._stop.is_set():
            block = bytearray(frames * 2)
            self.kwargs["callback"](block, frames, None, None)
            pcm = np.frombuffer(bytes(block), dtype=np.int16).astype(np.float64)
            self.heard.append((time.monotonic(), float(np.sqrt(np.mean(pcm**2)))))
            next_at += frames / self.kwargs["samplerate"]
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def loud_since(self, at: float) -> list[float]:
        return [t for t, rms in list(self.heard) if t >= at and rms > SPEECH_RMS]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def close(self) -> None:
        self.closed = True


def fake_sounddevice(rates: tuple[int, ...] = (16000, 48000)) -> types.ModuleType:
    sd = types.ModuleType("sounddevice")
    sd.streams = []
    devices = [{"name": "Fake Speakers", "max_output_channels": 2, "default_samplerate": 48000.0}]

    class PortAudioError(Exception):
        pass

    def query_devices(device=None, kind=None):
        if device is None:
            return devices
        for i, d in enumerate(devices):
            if device == i or (isinstance(device, str) and device.lower() in d["name"].lower()):
                return d
        raise ValueError(f"No output device matching {device!r}")

    def RawOutputStream(**kwargs):  # noqa: N802 (sounddevice's name)
        if kwargs["samplerate"] not in rates:
            raise PortAudioError("Invalid sample rate [PaErrorCode -9997]")
        stream = FakeStream(kwargs)
        sd.streams.append(stream)
        return stream

    sd.PortAudioError = PortAudioError
    sd.query_devices = query_devices
    sd.RawOutputStream = RawOutputStream
    return sd


class NoPortAudio(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import sounddevice` fail as it does where the PortAudio library is missing."""

    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise OSError("PortAudio library not found")


def camera_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("virtualcam-")]


def background_id(srv: RunningServer) -> int:
    assert len(srv.live.background) == 1, srv.live.background
    return next(iter(srv.live.background))


async def camera_state(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/stats") as resp:
        sessions = (await resp.json())["data"]["sessions"]
    outputs = [o for s in sessions for o in s["outputs"] if o["kind"] == "virtualcam"]
    assert len(outputs) == 1, sessions
    return outputs[0]


@pytest.fixture(autouse=True)
def fresh_cameras():
    RecordingCamera.instances.clear()
    yield
    RecordingCamera.instances.clear()


def test_the_camera_shows_the_avatar_speaking_and_closes_with_its_session(monkeypatch):
    """25 fps of pictures of the avatar's size; /human on session 0 moves the mouth (at rest
    before), its voice plays on --audio_device; DELETE /session closes camera and sound."""
    sd = fake_sounddevice()
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    srv = RunningServer(["--transport", "virtualcam", "--virtualcam_backend", "test-recorder",
                         "--audio_device", "fake speakers"])

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            sid = background_id(srv)
            assert len(RecordingCamera.instances) == 1
            cam = RecordingCamera.instances[0]
            poster = srv.live.sessions[sid].player.poster
            assert (cam.width, cam.height) == (poster.shape[1], poster.shape[0]) == (512, 512)
            assert cam.fps == 25 and cam.fourcc == pyvirtualcam.camera.encode_fourcc("24BG")
            assert await wait_until(lambda: len(cam.shots) > 0, 10)
            start = time.monotonic()
            await asyncio.sleep(3.0)
            shots = cam.since(start)
            fps = (len(shots) - 1) / (shots[-1].at - shots[0].at)
            assert fps >= 15, fps

            state = await camera_state(http, srv.url)
            assert state["state"] == "running", state
            assert state["sound"] == "Fake Speakers at 16000 Hz", state
            stream = sd.streams[0]
            assert stream.started and stream.kwargs["samplerate"] == 16000 and stream.kwargs["channels"] == 1
            assert stream.kwargs["dtype"] == "int16"
            assert not stream.loud_since(0), "sound before any speech"

            rest = cam.shots[-1].mouth
            idle = max(mouth_change(s.mouth, rest) for s in cam.since(time.monotonic() - 1.0))
            sent = time.monotonic()
            status, reply = await post_json(http, srv.url + "/human", {"sessionid": 0, "text": SENTENCE})
            assert status == 200, reply
            assert await wait_until(lambda: stream.loud_since(sent), 10), "the voice never reached the device"

            def quiet_again() -> bool:
                return time.monotonic() - max(stream.loud_since(sent), default=sent) > 1.0

            assert await wait_until(quiet_again, 15)
            changes = np.array([mouth_change(s.mouth, rest) for s in cam.since(sent)])
            tail = np.array([mouth_change(s.mouth, rest) for s in cam.shots[-8:]])

            # At rest before the speech: only the idle sway, compensated.
            assert idle < 4.0, idle
            # The lips move while the voice plays, and come back to rest after.
            assert changes.max() > max(3 * idle, 6.0), (changes.max(), idle)
            assert (changes > max(2 * idle, 4.0)).sum() >= 5
            assert tail.max() < max(2 * idle, 4.0), (tail.max(), idle)

            async with http.delete(f"{srv.url}/session/0") as resp:
                assert resp.status == 200, await resp.text()
            assert cam.closes == 1
            assert stream.closed and stream._stop.is_set()
            assert camera_threads() == []
            assert sid not in srv.live.sessions
            sent_before = len(cam.shots)
            await asyncio.sleep(0.3)
            assert len(cam.shots) == sent_before, "pictures after the camera closed"

    try:
        run(scenario())
    finally:
        srv.stop()


def test_without_portaudio_the_pictures_go_on_without_sound_and_a_missing_camera_is_a_503(monkeypatch, caplog):
    """sounddevice failing at import (no PortAudio) is logged and the camera runs silent; a
    session asking for a camera that cannot open gets the how-to in its error."""
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    srv = RunningServer(["--transport", "virtualcam", "--virtualcam_backend", "test-recorder", "--audio_device", "0"])

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            cam = RecordingCamera.instances[0]
            assert await wait_until(lambda: len(cam.shots) >= 25, 15), len(cam.shots)
            state = await camera_state(http, srv.url)
            assert state["state"] == "running" and "cannot load" in state["sound"], state
            assert "PortAudio library not found" in caplog.text

            srv.opt.virtualcam_backend = "test-missing"
            status, reply = await post_json(http, srv.url + "/session", {"outputs": ["virtualcam"]})
            assert status == 503, reply
            assert "No v4l2 loopback device" in reply["msg"], reply
            if platform.system() == "Linux":
                assert MODPROBE in reply["msg"], reply
            assert len(srv.live.sessions) == 1  # nothing of the refused session stays
            assert len(camera_threads()) == 1

    try:
        run(scenario())
    finally:
        srv.stop()
    assert RecordingCamera.instances[0].closes == 1
    assert camera_threads() == []


class StartingServer(RunningServer):
    """A RunningServer whose start-up may fail: the error is kept, and stop() still cleans up."""

    error: BaseException | None = None

    async def _start(self) -> None:
        try:
            await super()._start()
        except OutputError as exc:
            self.error = exc


def test_a_missing_camera_fails_the_servers_start_saying_how_to_load_v4l2loopback():
    srv = StartingServer(["--transport", "virtualcam", "--virtualcam_backend", "test-missing"])
    try:
        assert isinstance(srv.error, OutputError), srv.error
        assert "cannot open the virtual camera (512x512)" in srv.error.msg
        assert "No v4l2 loopback device" in srv.error.msg
        if platform.system() == "Linux":
            assert MODPROBE in srv.error.msg
        assert srv.live.sessions == {} and not srv.live.background
        assert camera_threads() == []
    finally:
        srv.stop()


def test_an_unknown_backend_is_named_with_the_known_ones():
    srv = StartingServer(["--transport", "virtualcam", "--virtualcam_backend", "nope"])
    try:
        assert isinstance(srv.error, OutputError), srv.error
        assert "no virtual camera backend 'nope'" in srv.error.msg and "test-recorder" in srv.error.msg
    finally:
        srv.stop()


@pytest.mark.skipif(platform.system() != "Linux" or bool(glob.glob("/dev/video*")),
                    reason="a machine without v4l2loopback devices")
def test_app_py_without_v4l2loopback_exits_with_the_modprobe_line():
    """As a user runs it, with pyvirtualcam's own v4l2loopback backend and no module loaded."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--transport", "virtualcam", "--listenport", "0",
         "--host", "127.0.0.1", "--capacity", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode != 0
    assert MODPROBE in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_the_sound_buffer_drops_the_oldest_when_the_device_is_behind_and_waits_to_refill():
    packet = 640
    buf = SoundBuffer(limit_packets=3, packet_bytes=packet, prime=2)
    assert buf.pull(packet) == bytes(packet) and buf.underruns == 0  # not primed yet: silence
    for i in range(5):
        buf.push(bytes([i + 1]) * packet)
    assert buf.dropped == 2 and buf.backlog() == 3 * packet
    assert buf.pull(packet) == bytes([3]) * packet  # the newest three are kept
    assert buf.pull(2 * packet) == bytes([4]) * packet + bytes([5]) * packet
    half = buf.pull(packet)
    assert half == bytes(packet) and buf.underruns == 1
    buf.push(bytes([9]) * packet)
    assert buf.pull(packet) == bytes(packet)  # refilling: one packet is not enough yet
    buf.push(bytes([9]) * packet)
    assert buf.pull(packet) == bytes([9]) * packet


def test_a_sound_device_that_refuses_16_khz_plays_at_its_own_rate_and_odd_pictures_are_fitted(monkeypatch):
    """The output alone (no server): the device's own rate (48 kHz here) when 16 kHz is
    refused, the sound resampled to it; a picture not of the avatar's size is resized."""
    sd = fake_sounddevice(rates=(48000,))
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    player = HumanPlayer(capacity=2)
    player.poster = np.zeros((512, 512, 3), dtype=np.uint8)
    opt = argparse.Namespace(virtualcam_backend="test-recorder", virtualcam_device=None, audio_device="Fake")
    events: list[dict] = []
    out = VirtualCamera(player, 7, None, opt, events.append)
    out.open()
    try:
        stream = sd.streams[0]
        assert stream.kwargs["samplerate"] == 48000 and stream.kwargs["blocksize"] == 960
        tone = (12000 * np.sin(np.arange(320) * 2 * np.pi * 440 / 16000)).astype(np.int16)
        for i in range(3):
            out.write(Sound(i, tone, True))
        out.write(Picture(0, np.full((256, 256, 3), 200, dtype=np.uint8)))
        assert wait_for(lambda: stream.loud_since(0), 5), "no sound at 48 kHz"
        cam = RecordingCamera.instances[0]
        assert len(cam.shots) == 1 and out.resized == 1 and int(cam.shots[0].mouth.mean()) == 200
        assert "48000 Hz" in out.describe()
    finally:
        out.finish(completed=True)
    assert RecordingCamera.instances[0].closes == 1 and stream.closed
    assert events[-1]["state"] == "closed", events


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return bool(predicate())
