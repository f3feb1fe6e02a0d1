"""python -m render: a whole audio file through a model's pipeline into an H.264 + AAC file,
the same every time, picture and sound of equal length, the mouth moving with the speech."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from audio_util import split_chunks
from lightreal import Ultralight
from render import frames_of
from tiny_models import FACE_BOX, write_hubert_folder, write_ultralight_avatar

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("render")
    write_hubert_folder(root / "models" / "hubert-large-ls960-ft")
    write_ultralight_avatar(root / "avatars" / "ul_test")
    return root


def speech_then_silence() -> np.ndarray:
    """1 s of a voiced buzz, then 1 s of silence, at 16 kHz."""
    t = np.arange(16000) / 16000
    buzz = 0.3 * sum(np.sin(2 * np.pi * 150 * h * t) / h for h in range(1, 8))
    return np.concatenate([buzz, np.zeros(16000)]).astype(np.float32)


def test_rendering_is_deterministic_and_moves_the_mouth_with_the_speech(files):
    opt = argparse.Namespace(avatar_id="ul_test", avatar_root=str(files / "avatars"), models_dir=str(files / "models"))
    model = Ultralight.load(opt)
    chunks = split_chunks(speech_then_silence())
    first = list(frames_of(model, chunks, 8, 10, 10, progress=False))
    second = list(frames_of(model, chunks, 8, 10, 10, progress=False))
    assert len(first) == 50  # 2 s at 25 fps
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    sound = np.concatenate([s for _, s in first])
    assert np.array_equal(sound, np.concatenate(chunks))  # every sample, in order
    # The file's silence is rendered by the model too (a trained one closes the mouth), so:
    # while the buzz plays the mouth changes from frame to frame; once the window has passed
    # it, the mouth holds still.
    x1, y1, x2, y2 = FACE_BOX
    mouths = [image[(y1 + y2) // 2 : y2, x1:x2].astype(int) for image, _ in first]
    steps = [np.abs(b - a).mean() for a, b in zip(mouths, mouths[1:], strict=False)]
    assert max(steps[:20]) > 1
    assert max(steps[32:]) == 0


def test_the_command_writes_h264_and_aac_of_the_audios_length(files, tmp_path):
    import soundfile as sf

    wav = tmp_path / "speech.wav"
    sf.write(wav, speech_then_silence(), 16000)
    out = tmp_path / "talk.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "render", "--model", "ultralight", "--avatar_id", "ul_test", "--avatar_root",
         str(files / "avatars"), "--models_dir", str(files / "models"), "--audio", str(wav), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(out)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert frames == 50
    assert abs(samples / audio.rate - 2.0) < 0.05
    assert {p.name for p in tmp_path.iterdir()} == {"speech.wav", "talk.mp4"}  # no partial file left
    missing = subprocess.run([sys.executable, "-m", "render", "--audio", str(tmp_path / "none.wav"), "--out",
                              str(tmp_path / "x.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "audio file not found" in missing.stderr
