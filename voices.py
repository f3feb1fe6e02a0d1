"""What a request's `tts.ref_file` may name, checked at the edge before any engine sees it.

The operator's --REF_FILE may be any path; a request's may not. Depending on the engine it
names a voice (a cloud or espeak voice name), a file in the voices folder (--voices_dir: a
piper .onnx voice, reference audio for a cloning engine), or for GPT-SoVITS a reference audio
path on the GPT-SoVITS machine. Nothing else is accepted, and no error says whether some
path outside the voices folder exists.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from safetext import shown

# Kinds of ref_file an engine takes from a request (TTSEngine.request_ref).
NAME = "name"  # a voice name or id: en-US-AriaNeural, cmn, en+f3, 101001, BV001_streaming
VOICE_FILE = "voice-file"  # a .onnx voice in the voices folder
AUDIO_FILE = "audio-file"  # reference audio in the voices folder
NAME_OR_AUDIO_FILE = "name-or-audio-file"  # Fish: a reference id stored on its server, or audio here
REMOTE_PATH = "remote-path"  # GPT-SoVITS: audio on the TTS machine

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus", ".aac")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,127}")
_FILE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,127}")
_SHOWN_NAMES = 20


class VoiceRefused(ValueError):
    """A request named a voice the server will not use; the message says what is accepted."""


def is_name(value: str) -> bool:
    return bool(_NAME.fullmatch(value))


def check_name(value: str) -> str:
    if not is_name(value):
        raise VoiceRefused(
            f"tts.ref_file must be a voice name (letters, digits and _ . : + -), got {_quoted(value)}"
        )
    return value


def voice_file(value: str, voices_dir: Path, suffixes: tuple[str, ...], what: str) -> str:
    """The path of file `value` (a name, or a relative path of names) inside `voices_dir`."""
    parts = value.replace("\\", "/").split("/")
    if not value or any(not _FILE_PART.fullmatch(p) or p in (".", "..") for p in parts):
        raise VoiceRefused(f"tts.ref_file must name {what} in the voices folder (--voices_dir), got {_quoted(value)}")
    if not any(value.lower().endswith(s) for s in suffixes):
        raise VoiceRefused(f"tts.ref_file {_quoted(value)} must end in {', '.join(suffixes)}")
    root = voices_dir.resolve()
    path = (root / Path(*parts)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise VoiceRefused(f"tts.ref_file {_quoted(value)} is not {what} in the voices folder; it has: "
                           f"{listing(root, suffixes)}")
    return str(path)


def remote_path(value: str) -> str:
    """A reference audio path on the TTS machine: printable, no '..', an audio suffix."""
    if not value.isprintable() or len(value) > 512:
        raise VoiceRefused("tts.ref_file must be a printable path of at most 512 characters")
    if ".." in value.replace("\\", "/").split("/"):
        raise VoiceRefused(f"tts.ref_file {_quoted(value)} must not contain '..'")
    if posixpath.splitext(value.lower())[1] not in AUDIO_SUFFIXES:
        raise VoiceRefused(f"tts.ref_file {_quoted(value)} must end in {', '.join(AUDIO_SUFFIXES)}")
    return value


def resolve(kind: str, value: str, voices_dir: Path) -> str:
    """A request's ref_file as the engine should use it, or VoiceRefused."""
    if kind == NAME:
        return check_name(value)
    if kind == VOICE_FILE:
        name = value if value.endswith(".onnx") else f"{value}.onnx"
        return voice_file(name, voices_dir, (".onnx",), "a piper voice")
    if kind == AUDIO_FILE:
        return voice_file(value, voices_dir, AUDIO_SUFFIXES, "reference audio")
    if kind == NAME_OR_AUDIO_FILE:
        if any(value.lower().endswith(s) for s in AUDIO_SUFFIXES):
            return voice_file(value, voices_dir, AUDIO_SUFFIXES, "reference audio")
        return check_name(value)
    if kind == REMOTE_PATH:
        return remote_path(value)
    raise VoiceRefused("this TTS engine takes no per-request voice")


def listing(root: Path, suffixes: tuple[str, ...]) -> str:
    """The voice files of the voices folder, for an error message."""
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    except OSError:
        names = []
    if not names:
        return "nothing"
    more = f" (and {len(names) - _SHOWN_NAMES} more)" if len(names) > _SHOWN_NAMES else ""
    return ", ".join(names[:_SHOWN_NAMES]) + more


def _quoted(value: str) -> str:
    return shown(value, 60)
