"""The two kinds of network engine and how they read upstream's flags.

Self-hosted servers (GPT-SoVITS, XTTS, CosyVoice, Fish Speech, IndexTTS2) live at
--TTS_SERVER and clone the voice of reference audio --REF_FILE, whose words are --REF_TEXT.
Clouds (Edge, Tencent, Doubao, Azure) take a voice name or id in --REF_FILE and their keys
from environment variables.
"""

from __future__ import annotations

import logging
from typing import Any

from tts.http_stream import env_keys, missing_keys, require_keys
from ttsreal import TTSEngine, Voice

log = logging.getLogger(__name__)


class ServerEngine(TTSEngine):
    """An engine served by a self-hosted TTS server."""

    def __init__(self, server: str, ref_file: str | None = None, ref_text: str | None = None) -> None:
        if not server:
            raise ValueError(f"--tts {self.name} needs --TTS_SERVER, the address of its server")
        self.server = server.rstrip("/")
        self.default_voice = Voice(ref_file or None, ref_text or None)

    @classmethod
    def from_opt(cls, opt: Any) -> ServerEngine:
        server = getattr(opt, "TTS_SERVER", None) or ""
        return cls(server, getattr(opt, "REF_FILE", None), getattr(opt, "REF_TEXT", None))

    def voice_for(self, voice: Voice | None) -> Voice:
        """The request's voice: its own fields, the rest from --REF_FILE / --REF_TEXT."""
        return (voice or Voice()).over(self.default_voice)


class CloudEngine(TTSEngine):
    """An engine of an online service; `env` names the environment variables of its keys."""

    env: tuple[str, ...] = ()
    default_voice_name: str = ""

    def __init__(self, voice: str | None = None, keys: dict[str, str | None] | None = None) -> None:
        self.voice = voice or self.default_voice_name
        self.keys = keys if keys is not None else env_keys(self.env)
        missing = missing_keys(self.keys)
        if missing:
            # Not fatal: the server still runs, and each sentence reports the missing key.
            names = ", ".join(missing)
            log.warning("%s: environment variable %s not set; speech will fail until it is", self.name, names)

    @classmethod
    def from_opt(cls, opt: Any, **kwargs: Any) -> CloudEngine:
        return cls(getattr(opt, "REF_FILE", None), **kwargs)

    def voice_name(self, voice: Voice | None) -> str:
        """The voice of a request: its ref_file when it names one, else --REF_FILE."""
        return voice.ref_file if voice is not None and voice.ref_file else self.voice

    def require_keys(self) -> dict[str, str]:
        return require_keys(self.name, self.keys)
