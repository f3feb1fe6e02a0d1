"""Actions (upstream's "custom video"): clips a session plays on cue instead of its avatar.

A clip is upstream's `custom_config.json` entry `{"audiotype": N, "imgpath": folder,
"audiopath": wav}`. Its folder is either an avatar folder of the running model, whose frames
the model lip-syncs like the avatar's, or plain numbered images shown as they are (fitted to
the avatar's frame size). As upstream:
- audiotype 1 replaces the idle loop: it plays (forward then backward) whenever nobody speaks;
- any other plays once on `/set_audiotype`, with its sound when it has one (lip-synced on it
  when the clip is an avatar), then the session returns to idle;
- `/human` may carry `"action": N`: the clip plays while that text is spoken, the mouth
  rendered onto its frames when it is an avatar.

Which picture a video frame shows is decided where its audio is fed (the session's feeder
thread), from the speech's own start events, so a clip starts on the frame its sound starts,
wherever queues and look-ahead put it. An interrupt stops the clip with the sound.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from audio_util import decode_audio_bytes
from avatar_files import numbered_images, read_images
from basereal import LipModel, Renderer, mirror_index
from safetext import UnsafeJSON, clean_json

log = logging.getLogger(__name__)

IDLE_AUDIOTYPE = 1  # upstream's "silent" state: its clip is the idle loop
MAX_CLIPS = 32
MAX_CLIP_FRAMES = 3000  # 2 minutes at 25 fps: a clip is held in memory whole
MAX_REQUEST_FRAMES = 3000  # plain frames one request's custom_config may add in all
MAX_CACHED_FRAMES = 3000  # plain frames of requests' clips kept loaded for later sessions
MAX_CLIP_AUDIO_BYTES = 64 << 20
MAX_CLIP_AUDIO_SECONDS = 300.0
MAX_CONFIG_BYTES = 256 * 1024
# Silence inside a clip's speech (between two sentences of one answer) shorter than this keeps
# the clip on screen; longer, and the session returns to its avatar.
SPEECH_GAP_FRAMES = 6


class ClipError(ValueError):
    """A clip entry or folder that cannot be used; the message names it."""


@dataclass(frozen=True, eq=False)
class Clip:
    """One action, loaded: read-only, shared by the sessions that use it."""

    audiotype: int
    source: str  # the folder, for messages and logs
    length: int  # frames
    frames: Sequence[np.ndarray] | None = None  # plain images, shown as they are
    avatar: Any = None  # an avatar of the model (lip-synced)
    audio: np.ndarray | None = None  # 16 kHz mono float32

    def describe(self) -> dict:
        return {"audiotype": self.audiotype, "frames": self.length, "lip_sync": self.avatar is not None,
                "sound_s": None if self.audio is None else round(len(self.audio) / 16000, 2)}


class FramesRenderer(Renderer):
    """A clip of plain images: no mouth to move, every frame is shown as it is, fitted to the
    session's frame size when its avatar has another."""

    lip_sync = False

    def __init__(self, frames: Sequence[np.ndarray], size: tuple[int, int] | None = None) -> None:
        self.frames = frames
        self.size = size  # (width, height)

    def infer(self, feats: np.ndarray, indices: Sequence[int]) -> Sequence[Any]:
        return list(indices)

    def paste_back(self, pred: Any, index: int) -> np.ndarray:
        return self.idle_frame(index)

    def idle_frame(self, index: int) -> np.ndarray:
        frame = self.frames[mirror_index(index, len(self.frames))]
        if self.size is not None and frame.shape[1::-1] != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        return frame


class FramesCache:
    """Requests' plain clips by folder, shared by the sessions that name the same one, at most
    `max_frames` frames in all (the least recently used go first; a session keeps its own)."""

    def __init__(self, max_frames: int = MAX_CACHED_FRAMES) -> None:
        self.max_frames = max_frames
        self._frames: OrderedDict[Path, list[np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, folder: Path, load: Callable[[Path], list[np.ndarray]]) -> list[np.ndarray]:
        with self._lock:
            if folder in self._frames:
                self._frames.move_to_end(folder)
                return self._frames[folder]
        frames = load(folder)
        with self._lock:
            self._frames[folder] = frames
            while sum(len(f) for f in self._frames.values()) > self.max_frames and len(self._frames) > 1:
                self._frames.popitem(last=False)
        return frames


# --- configuration --------------------------------------------------------------------------
def parse_entries(value: Any, where: str) -> list[dict]:
    """Upstream's custom_config: a list of {"audiotype": int, "imgpath": str, "audiopath"?: str}."""
    if isinstance(value, str):  # upstream's pages send the list as a JSON string
        if len(value) > MAX_CONFIG_BYTES:
            raise ClipError(f"{where}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
        try:
            value = clean_json(json.loads(value))
        except json.JSONDecodeError as exc:
            raise ClipError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
        except (RecursionError, UnsafeJSON):
            raise ClipError(f"{where}: nested too deeply") from None
    if not isinstance(value, list) or len(value) > MAX_CLIPS:
        raise ClipError(f"{where}: must be a list of at most {MAX_CLIPS} "
                        '{"audiotype": N, "imgpath": folder, "audiopath": wav} entries')
    seen: set[int] = set()
    entries = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ClipError(f"{where}: entry {i} is not an object")
        unknown = set(item) - {"audiotype", "imgpath", "audiopath"}
        if unknown:
            raise ClipError(f"{where}: entry {i} has unknown fields {sorted(str(k)[:40] for k in unknown)[:5]}")
        audiotype = item.get("audiotype")
        if not isinstance(audiotype, int) or isinstance(audiotype, bool) or not 1 <= audiotype <= 10**6:
            raise ClipError(f"{where}: entry {i}: 'audiotype' must be a whole number of at least 1")
        if audiotype in seen:
            raise ClipError(f"{where}: audiotype {audiotype} appears twice")
        seen.add(audiotype)
        for key in ("imgpath", "audiopath"):
            if key in item and (not isinstance(item[key], str) or not 0 < len(item[key]) <= 1024):
                raise ClipError(f"{where}: entry {i}: '{key}' must be a path")
        if "imgpath" not in item:
            raise ClipError(f"{where}: entry {i} (audiotype {audiotype}) has no 'imgpath'")
        entries.append(item)
    return entries


def read_config_file(path: Path) -> list[dict]:
    """--customvideo_config's entries, with errors naming the file."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ClipError(f"--customvideo_config {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipError(f"cannot read --customvideo_config {path}: {exc}") from None
    return parse_entries(text, f"--customvideo_config {path}")


class ClipLoader:
    """Loads clips for one model; `roots`, when given, are the only folders a clip's files may
    lie in (entries from a request), else any path (the operator's own config file)."""

    def __init__(self, model: LipModel, frame_size: tuple[int, int], base: Path,
                 roots: Sequence[Path] | None = None, avatars: Any = None,
                 frames_cache: FramesCache | None = None) -> None:
        self.model = model
        self.frame_size = frame_size  # (width, height) plain frames are fitted to
        self.base = base  # relative paths are relative to it
        self.roots = None if roots is None else [Path(r).resolve() for r in roots]
        # A request's clips: avatar folders come from the shared avatar cache, plain frames
        # from a shared bounded cache, so no request can load the same folder many times over.
        self.avatars = avatars
        self.frames_cache = frames_cache

    def load_all(self, entries: list[dict]) -> dict[int, Clip]:
        clips = {e["audiotype"]: self.load(e) for e in entries}
        plain = sum(c.length for c in clips.values() if c.frames is not None)
        if self.roots is not None and plain > MAX_REQUEST_FRAMES:
            raise ClipError(f"custom_config's clips have {plain} frames in all; a request may add at most "
                            f"{MAX_REQUEST_FRAMES}")
        return clips

    def _path(self, value: str, what: str) -> Path:
        path = Path(value)
        path = (path if path.is_absolute() else self.base / path).resolve()
        if self.roots is not None and not any(path.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise ClipError(f"{what} {value!r} is outside the folders clips may come from ({allowed})")
        return path

    def load(self, entry: dict) -> Clip:
        audiotype = entry["audiotype"]
        folder = self._path(entry["imgpath"], f"audiotype {audiotype}: imgpath")
        if not folder.is_dir():
            raise ClipError(f"audiotype {audiotype}: imgpath {entry['imgpath']!r} is not a folder")
        audio = self._audio(entry["audiopath"], audiotype) if "audiopath" in entry else None
        try:
            if (folder / "full_imgs").is_dir():  # every model's avatar folders have one
                avatar = self._avatar(folder, entry["imgpath"])
                clip = Clip(audiotype, str(folder), _avatar_length(avatar), avatar=avatar, audio=audio)
            else:
                frames = self.frames_cache.get(folder, self._frames) if self.frames_cache else self._frames(folder)
                clip = Clip(audiotype, str(folder), len(frames), frames=frames, audio=audio)
        except (FileNotFoundError, ValueError) as exc:
            raise ClipError(f"audiotype {audiotype}: {exc}") from None
        log.info("action %d: %d frames from %s%s%s", audiotype, clip.length, folder,
                 " (an avatar: lip-synced)" if clip.avatar is not None else "",
                 f", {len(audio) / 16000:.1f} s of sound" if audio is not None else "")
        return clip

    def _avatar(self, folder: Path, given: str) -> Any:
        if self.avatars is None:
            return self.model.load_avatar(folder)
        if folder.parent != Path(self.avatars.root).resolve():
            raise ClipError(f"imgpath {given!r} is an avatar folder outside the avatar root; a request's clip "
                            "may only be an avatar of the root (loaded once for every session) or plain images")
        return self.avatars.get(folder.name)

    def _frames(self, folder: Path) -> list[np.ndarray]:
        paths = numbered_images(folder)
        if len(paths) > MAX_CLIP_FRAMES:
            raise ClipError(f"{folder} has {len(paths)} frames; a clip may have at most {MAX_CLIP_FRAMES}")
        w, h = self.frame_size
        frames = []
        for image in read_images(paths, folder.name):
            if image.shape[1::-1] != (w, h):
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            image.setflags(write=False)
            frames.append(image)
        return frames

    def _audio(self, value: str, audiotype: int) -> np.ndarray:
        path = self._path(value, f"audiotype {audiotype}: audiopath")
        try:
            size = path.stat().st_size
            if size > MAX_CLIP_AUDIO_BYTES:
                raise ClipError(f"audiotype {audiotype}: {value!r} is larger than {MAX_CLIP_AUDIO_BYTES >> 20} MB")
            data = path.read_bytes()
        except OSError as exc:
            raise ClipError(f"audiotype {audiotype}: cannot read audiopath {value!r}: {exc.strerror}") from None
        try:
            audio = decode_audio_bytes(data, path.name, MAX_CLIP_AUDIO_SECONDS)
        except ValueError as exc:
            raise ClipError(f"audiotype {audiotype}: {exc}") from None
        audio.setflags(write=False)
        return audio


def _avatar_length(avatar: Any) -> int:
    frames = getattr(avatar, "frames", None)
    return len(frames) if frames is not None else 1  # a portrait is one photo


# --- one session's stage ----------------------------------------------------------------------
Look = tuple[Renderer, int, bool]  # the renderer, its frame index, whether the mouth is inferred


@dataclass
class _Playing:
    clip: Clip
    start: int  # session frame index of the clip's first frame
    with_sound: bool  # lasts as long as the speech that started it, else its frames once
    last_speech: int = -1


@dataclass
class Stage:
    """What one session shows per video frame: its avatar, or an action's clip.

    `looks` runs on the feeder thread; `play`, `cue`, `stop` and `refit` come from the event loop.
    """

    clips: dict[int, Clip]
    avatar_renderer: Callable[[Any], Renderer]  # the session's renderer of an avatar clip
    frame_size: Callable[[], tuple[int, int]]  # the session's (width, height), plain clips fit it
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cue: Clip | None = None
    _stop: bool = False
    _playing: _Playing | None = None
    _renderers: dict[int, Renderer] = field(default_factory=dict)  # per clip, made on first use

    def renderer_for(self, clip: Clip) -> Renderer:
        renderer = self._renderers.get(id(clip))
        if renderer is None:
            if clip.avatar is not None:
                renderer = self.avatar_renderer(clip.avatar)
            else:
                renderer = FramesRenderer(clip.frames or [], self.frame_size())
            self._renderers[id(clip)] = renderer
        return renderer

    def refit(self) -> None:
        """The session's avatar changed: plain clips are fitted to its size from now on."""
        self._renderers.clear()

    def play(self, audiotype: int) -> np.ndarray | None:
        """Upstream's /set_audiotype: 1 returns to the idle loop, a clip without sound is cued;
        a clip's sound is returned for the session to speak (the clip follows its start)."""
        if audiotype == IDLE_AUDIOTYPE:
            self.stop()
            return None
        clip = self.clips[audiotype]
        if clip.audio is None:
            self.cue(clip)
        return clip.audio

    def cue(self, clip: Clip) -> None:
        """Play a clip without sound from the next frame fed, once."""
        with self._lock:
            self._cue, self._stop = clip, False

    def stop(self) -> None:
        """Back to the avatar (or the idle clip) from the next frame fed."""
        with self._lock:
            self._cue, self._stop = None, True

    @property
    def playing(self) -> int | None:
        """The audiotype on screen now (as fed), None for the avatar."""
        playing = self._playing
        return None if playing is None else playing.clip.audiotype

    def resting(self, base: Renderer) -> Look:
        """What shows at rest before any frame is fed (the poster): the idle clip, else the avatar."""
        idle = self.clips.get(IDLE_AUDIOTYPE)
        return (self.renderer_for(idle), 0, False) if idle is not None else (base, 0, False)

    def looks(self, units: Sequence[Any], first: int, base: Renderer) -> list[Look]:
        """The look of each of `units` (session frames first, first+1, ...)."""
        with self._lock:
            if self._stop:
                self._playing, self._stop = None, False
            if self._cue is not None:
                self._playing, self._cue = _Playing(self._cue, first, with_sound=False), None
            return [self._look(unit, first + k, base) for k, unit in enumerate(units)]

    def _look(self, unit: Any, index: int, base: Renderer) -> Look:
        self._follow(unit, index)
        playing = self._playing
        if playing is not None:
            renderer = self.renderer_for(playing.clip)
            return renderer, index - playing.start, getattr(renderer, "lip_sync", True)
        idle = self.clips.get(IDLE_AUDIOTYPE)
        if idle is not None and not unit.speech:
            return self.renderer_for(idle), index, False
        return base, index, True

    def _follow(self, unit: Any, index: int) -> None:
        """Start or end a clip on this frame's speech."""
        for frame in unit.audio:
            for event in frame.events:
                if event.get("status") != "start":
                    continue
                action = event.get("action")
                clip = self.clips.get(action) if type(action) is int else None
                if clip is None:
                    self._playing = None  # speech without an action: the avatar speaks it
                elif not (self._playing and self._playing.clip is clip and self._playing.with_sound):
                    self._playing = _Playing(clip, index, with_sound=True)
        playing = self._playing
        if playing is None:
            return
        if playing.with_sound:
            if unit.speech:
                playing.last_speech = index
            elif index - max(playing.last_speech, playing.start) > SPEECH_GAP_FRAMES:
                self._playing = None
        elif index - playing.start >= playing.clip.length:
            self._playing = None
