"""What a request's tts.ref_file may name (finding 10): with piper the error told whether a path
existed, xtts and CosyVoice uploaded any local audio-suffixed file to the TTS server, and
GPT-SoVITS forwarded any string, NUL bytes included."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import voices
from ttsreal import Voice, load_tts_engine
from voices import VoiceRefused


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "alice.wav").write_bytes(b"RIFF")
    (tmp_path / "joe.onnx").write_bytes(b"onnx")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bob.mp3").write_bytes(b"ID3")
    (tmp_path / "notes.txt").write_text("not a voice")
    return tmp_path


def refused(kind: str, value: str, folder: Path) -> str:
    with pytest.raises(VoiceRefused) as exc:
        voices.resolve(kind, value, folder)
    return str(exc.value)


def test_files_resolve_inside_the_voices_folder_only(folder):
    assert voices.resolve(voices.AUDIO_FILE, "alice.wav", folder) == str(folder / "alice.wav")
    assert voices.resolve(voices.AUDIO_FILE, "sub/bob.mp3", folder) == str(folder / "sub" / "bob.mp3")
    assert voices.resolve(voices.VOICE_FILE, "joe", folder) == str(folder / "joe.onnx")
    outside = folder.parent / "outside.wav"
    outside.write_bytes(b"RIFF")
    (folder / "link.wav").symlink_to(outside)
    for value in ("/etc/passwd", "../outside.wav", "sub/../../outside.wav", "link.wav", str(outside),
                  "alice.wav\u0000.wav", "~/x.wav", "notes.txt", ".hidden.wav"):
        msg = refused(voices.AUDIO_FILE, value, folder)
        assert "voices folder" in msg or "must end in" in msg, (value, msg)


def test_an_error_never_tells_whether_a_path_outside_exists(folder):
    """The same answer for a file that exists outside the folder and one that exists nowhere:
    only the folder's own voices are listed."""
    exists = refused(voices.AUDIO_FILE, "/etc/hostname.wav", folder).replace("hostname", "X")
    nowhere = refused(voices.AUDIO_FILE, "/no/such/place.wav", folder)
    assert exists.replace("'/etc/X.wav'", "?") == nowhere.replace("'/no/such/place.wav'", "?")
    missing = refused(voices.VOICE_FILE, "nobody", folder)
    assert "it has: joe.onnx" in missing and "alice" not in missing


def test_names_are_plain_and_remote_paths_are_printable_audio_without_dot_dot(folder):
    for name in ("en-US-AriaNeural", "cmn", "en+f3", "101001", "BV001_streaming", "en-US-Ava:DragonHDLatestNeural"):
        assert voices.resolve(voices.NAME, name, folder) == name
    for bad in ("<voice>", "a b", "x" * 200, "../etc", "a\nb", ""):
        assert "voice name" in refused(voices.NAME, bad, folder)
    assert voices.resolve(voices.REMOTE_PATH, "/data/refs/alice.wav", folder) == "/data/refs/alice.wav"
    for bad in ("/data/\u0000alice.wav", "/data/../etc/passwd.wav", "/etc/passwd", "C:\\refs\\..\\x.wav"):
        refused(voices.REMOTE_PATH, bad, folder)
    # Fish: a reference id stored on its server, or audio from the folder.
    assert voices.resolve(voices.NAME_OR_AUDIO_FILE, "my_voice", folder) == "my_voice"
    assert voices.resolve(voices.NAME_OR_AUDIO_FILE, "alice.wav", folder) == str(folder / "alice.wav")
    refused(voices.NAME_OR_AUDIO_FILE, "/etc/passwd", folder)


@pytest.mark.parametrize(
    ("tts", "accepted", "rejected"),
    [
        ("xtts", "alice.wav", "/etc/machine-id.wav"),
        ("cosyvoice", "sub/bob.mp3", "../alice.wav"),
        ("indextts2", "alice.wav", "/tmp/x.wav"),
        ("fishtts", "my_voice", "/etc/passwd"),
        ("gpt-sovits", "/srv/refs/a.wav", "/srv/refs/a.wav\u0000"),
        ("edgetts", "en-US-GuyNeural", "<speak>"),
        ("azuretts", "zh-CN-XiaoxiaoNeural", "x'/><injected/>"),
        ("espeak", "cmn", "../../voice"),
    ],
)
def test_each_engine_checks_a_request_voice_by_its_own_kind(folder, tts, accepted, rejected):
    opt = argparse.Namespace(tts=tts, TTS_SERVER="http://127.0.0.1:9", REF_FILE=None, REF_TEXT="words")
    engine = load_tts_engine(opt)
    assert engine.request_voice(Voice(accepted, "hi"), folder).ref_text == "hi"
    with pytest.raises(VoiceRefused):
        engine.request_voice(Voice(rejected), folder)
    assert engine.request_voice(Voice(None, "only the words"), folder) == Voice(None, "only the words")
