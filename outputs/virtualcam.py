"""The avatar as a webcam (pyvirtualcam), for Zoom, Teams, OBS or a browser: `--transport virtualcam`.

Pictures go to a virtual camera device as they leave the session's clock, which already paces
them at 25 fps. On Linux the device is a v4l2loopback one (`sudo modprobe v4l2loopback ...`);
on Windows and macOS it is OBS's Virtual Camera. A camera has no sound: with `--audio_device`
the avatar's voice plays on that sound output (a speaker, or a virtual cable a meeting app
takes as its microphone), through a small bounded buffer that the device drains at its own
pace, so the sound never holds up the pictures; what a device that falls behind cannot take
is dropped and counted.

The camera (and the sound device) is opened when the output starts, so a missing device is
an error at once: `--transport virtualcam` does not start, POST /session answers 503, with
the message saying how to create the device.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import platform
import threading
from types import ModuleType
from typing import Any

import av
import cv2
import pyvirtualcam

from baseasr import CHUNK, SAMPLE_RATE
from outputs.base import OutputError, ThreadedOutput
from outputs.player import FPS
from outputs.tap import Media, Picture, Sound

log = logging.getLogger(__name__)

CAMERA_BEHIND_S = 1.0  # a live camera keeps at most this much media queued; older goes
SOUND_BUFFER_S = 0.3  # sound waiting for the device; more is dropped (oldest first)
MODPROBE = "sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=LiveTalking exclusive_caps=1"


def how_to_get_a_camera() -> str:
    """What the user should do when no virtual camera device could be opened, on this OS."""
    if platform.system() == "Linux":
        return (f"load the v4l2loopback kernel module (package v4l2loopback-dkms): {MODPROBE} "
                "(that makes /dev/video10, for --virtualcam_device)")
    return "install OBS Studio (28 or later) and start its Virtual Camera once, then stop it"


def parse_audio_device(value: str | None) -> int | str | None:
    """--audio_device: a device index (digits) or a name (or part of one), or None."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def load_sounddevice() -> ModuleType | None:
    """sounddevice, or None (logged) when it or its PortAudio library is missing."""
    try:
        return importlib.import_module("sounddevice")
    except (OSError, ImportError) as exc:
        log.warning("no sound for the virtual camera: sounddevice cannot load (%s); "
                    "install it and PortAudio (apt install libportaudio2). The pictures go on", exc)
        return None


class SoundBuffer:
    """Bytes of int16 sound between the output thread (push) and the device's callback (pull).

    Bounded: when the device takes less than it is given, the oldest sound goes, whole packets
    at a time, and is counted. When it takes more, it gets silence (an underrun, counted) until
    `prime` packets are queued again, so the clock's jitter does not cut the sound into bits."""

    def __init__(self, limit_packets: int, packet_bytes: int, prime: int = 2) -> None:
        self.packet_bytes = packet_bytes
        self.limit_packets = limit_packets
        self.prime_packets = prime
        self._data = bytearray()
        self._lock = threading.Lock()
        self._primed = False
        self.dropped = 0  # packets dropped because the device was behind
        self.underruns = 0  # callbacks that found less sound than they needed
        self.played = 0  # bytes handed to the device

    def push(self, pcm: bytes) -> None:
        with self._lock:
            self._data += pcm
            excess = len(self._data) - self.limit_packets * self.packet_bytes
            if excess > 0:
                packets = -(-excess // self.packet_bytes)
                del self._data[: packets * self.packet_bytes]
                self.dropped += packets

    def pull(self, nbytes: int) -> bytes:
        """What the device plays next: exactly `nbytes`, silence where there is no sound."""
        with self._lock:
            if not self._primed:
                if len(self._data) < max(nbytes, self.prime_packets * self.packet_bytes):
                    return bytes(nbytes)
                self._primed = True
            chunk = bytes(self._data[:nbytes])
            del self._data[:nbytes]
            if len(chunk) < nbytes:
                self.underruns += 1
                self._primed = False
            self.played += len(chunk)
        return chunk + bytes(nbytes - len(chunk))

    def backlog(self) -> int:
        with self._lock:
            return len(self._data)


class VirtualCamera(ThreadedOutput):
    kind = "virtualcam"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device = getattr(self.opt, "virtualcam_device", None) or None
        self.backend = getattr(self.opt, "virtualcam_backend", None) or None
        self.audio_device = parse_audio_device(getattr(self.opt, "audio_device", None))
        self.tap.limit = int(CAMERA_BEHIND_S * FPS * (3 if self.audio_device is not None else 1))
        self.tap.audio = self.audio_device is not None  # no sound device: no sound queued
        self.size = self.picture_size()
        self._cam: pyvirtualcam.Camera | None = None
        self._stream: Any = None
        self._sound: SoundBuffer | None = None
        self._sound_name = ""
        self._rate = SAMPLE_RATE
        self._resampler: av.AudioResampler | None = None
        self._open_lock = threading.Lock()
        self._sound_tried = False
        self.frames = 0
        self.resized = 0

    # --- opening ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the devices first (a missing camera is the start's error), then the thread."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.open)
        except BaseException:
            self.finish(completed=False)
            raise
        await super().start()

    def open(self) -> None:
        with self._open_lock:
            if self._cam is None:
                self._cam = self._open_camera()
            if not self._sound_tried:
                self._sound_tried = True
                if self.audio_device is not None:
                    self._open_sound()
                else:
                    log.info("session %s: the virtual camera's sound is not played (a camera has none); "
                             "choose a sound output with --audio_device to hear it", self.sessionid)

    def _open_camera(self) -> pyvirtualcam.Camera:
        from pyvirtualcam.camera import BACKENDS

        if self.backend is not None and self.backend not in BACKENDS:
            raise OutputError(f"no virtual camera backend '{self.backend[:40]}' (--virtualcam_backend); "
                              f"this system has: {', '.join(BACKENDS) or 'none'}", 400)
        if not BACKENDS:
            raise OutputError(f"pyvirtualcam has no virtual camera backend on {platform.system()}", 501)
        width, height = self.size
        try:
            cam = pyvirtualcam.Camera(width, height, fps=FPS, fmt=pyvirtualcam.PixelFormat.BGR,
                                      device=self.device, backend=self.backend)
        except Exception as exc:
            where = f" {self.device}" if self.device else ""
            msg = (f"cannot open the virtual camera{where} ({width}x{height}): "
                   f"{' / '.join(str(exc).splitlines()).rstrip('. ') or type(exc).__name__}. "
                   f"To create one, {how_to_get_a_camera()}")
            log.error("session %s output virtualcam: %s", self.sessionid, msg)
            raise OutputError(msg, 503) from exc
        log.info("session %s: virtual camera %s (%s backend) opened at %dx%d, %d fps",
                 self.sessionid, cam.device, cam.backend, width, height, FPS)
        return cam

    def _open_sound(self) -> None:
        sd = load_sounddevice()
        if sd is None:
            self._sound_name = "none (sounddevice cannot load)"
            return
        device = self.audio_device
        try:
            info = sd.query_devices(device, "output")
        except Exception as exc:
            raise OutputError(f"no sound output device {device!r} (--audio_device): {exc}; "
                              f"the output devices are: {self._output_devices(sd)}", 400) from exc
        name = str(info.get("name", device))
        rates = [SAMPLE_RATE]
        native = int(info.get("default_samplerate") or 0)
        if native and native != SAMPLE_RATE:
            rates.append(native)
        errors = []
        for rate in rates:
            blocksize = CHUNK * rate // SAMPLE_RATE
            self._sound = SoundBuffer(int(SOUND_BUFFER_S * 50), blocksize * 2)  # before the callback runs
            stream = None
            try:
                stream = sd.RawOutputStream(samplerate=rate, channels=1, dtype="int16", device=device,
                                            blocksize=blocksize, latency="low", callback=self._fill)
                stream.start()
            except Exception as exc:
                errors.append(f"{rate} Hz: {exc}")
                self._sound = None
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:
                        pass
                continue
            self._stream, self._rate = stream, rate
            if rate != SAMPLE_RATE:  # the device's own rate: PyAV resamples, as for AAC
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            self._sound_name = f"{name} at {rate} Hz"
            log.info("session %s: the virtual camera's sound plays on %s", self.sessionid, self._sound_name)
            return
        raise OutputError(f"cannot play sound on {name!r} (--audio_device): {'; '.join(errors)}", 503)

    @staticmethod
    def _output_devices(sd: ModuleType) -> str:
        try:
            devices = sd.query_devices()
            names = [f"{i} '{d['name']}'" for i, d in enumerate(devices) if d.get("max_output_channels", 0) > 0]
        except Exception as exc:
            return f"(cannot list them: {exc})"
        return ", ".join(names) or "none"

    def _fill(self, outdata: Any, frames: int, _time: Any, _status: Any) -> None:
        """The sound device's callback (PortAudio's thread): never blocks, never raises."""
        sound = self._sound
        nbytes = len(outdata)
        outdata[:] = sound.pull(nbytes) if sound is not None else bytes(nbytes)

    def describe(self) -> str:
        cam = self._cam
        where = f"{cam.device} ({cam.backend})" if cam is not None else "?"
        sound = self._sound_name or "not played (no --audio_device)"
        return f"{where} at {self.size[0]}x{self.size[1]}, {FPS} fps; sound: {sound}"

    # --- media -----------------------------------------------------------------------------
    def write(self, item: Media) -> None:
        if isinstance(item, Picture):
            cam = self._cam
            assert cam is not None
            image = item.image
            if image.shape[1::-1] != self.size:  # a picture not of the avatar's size: fit it
                image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
                self.resized += 1
            cam.send(image)  # no sleep_until_next_frame: the session's clock paces the pictures
            self.frames += 1
        elif isinstance(item, Sound) and self._sound is not None:
            if self._resampler is None:
                self._sound.push(item.pcm.tobytes())
                return
            frame = av.AudioFrame.from_ndarray(item.pcm.reshape(1, CHUNK), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for resampled in self._resampler.resample(frame):
                self._sound.push(resampled.to_ndarray().tobytes())

    def finish(self, completed: bool) -> None:
        with self._open_lock:
            stream, self._stream = self._stream, None
            cam, self._cam = self._cam, None
        if stream is not None:
            try:
                stream.stop()
            except Exception:
                log.warning("session %s: stopping the virtual camera's sound failed", self.sessionid, exc_info=True)
            try:
                stream.close()
            except Exception:
                log.warning("session %s: closing the virtual camera's sound failed", self.sessionid, exc_info=True)
        if cam is not None:
            try:
                cam.close()
            except Exception:
                log.warning("session %s: closing the virtual camera failed", self.sessionid, exc_info=True)
            if completed:
                self.tell("closed", f"{self.frames} pictures sent")

    async def stop(self) -> None:
        await super().stop()
        if not self._thread.is_alive():
            self.finish(completed=False)  # opened by start() but the thread never ran: release

    def state(self) -> dict[str, Any]:
        sound = self._sound
        return {
            **super().state(),
            "frames": self.frames,
            "sound": self._sound_name or None,
            "sound_dropped": sound.dropped if sound is not None else 0,
            "sound_underruns": sound.underruns if sound is not None else 0,
        }
