"""`--model wav2lip` end to end: an upstream-format checkpoint (random weights) and an avatar made
by genavatar, served to a real aiortc peer; plus the avatar loader and the paste-back."""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from conftest import RunningServer
from livepeer import LivePeer
from portrait_geometry import SWAY_PX, mouth_change

torch = pytest.importorskip("torch")

from lipreal import load_lip_avatar, paste_face  # noqa: E402
from wav2lip.checkpoint import save_checkpoint  # noqa: E402
from wav2lip.genavatar import make_avatar  # noqa: E402
from wav2lip.random_init import random_wav2lip  # noqa: E402

PORTRAIT = Path(__file__).resolve().parent.parent / "data/avatars/portrait_astronaut/full_imgs/00000000.png"
SPEECH_RMS = 0.02


@pytest.fixture(scope="module")
def wav2lip_files(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("wav2lip")
    checkpoint = tmp / "wav2lip.pth"
    save_checkpoint(random_wav2lip(seed=3), checkpoint, prefix_module=True)
    frame = cv2.imread(str(PORTRAIT))
    make_avatar([frame] * 4, tmp / "avatars" / "w2l_test", img_size=256, progress=False)
    return checkpoint, tmp / "avatars"


def test_avatar_folder_loads_in_upstream_format(wav2lip_files):
    _, root = wav2lip_files
    avatar = load_lip_avatar(root / "w2l_test")
    assert len(avatar) == 4
    assert avatar.faces.shape == (4, 256, 256, 3)
    y1, y2, x1, x2 = avatar.coords[0]
    assert 0 <= y1 < y2 <= 512 and 0 <= x1 < x2 <= 512


def test_avatar_errors_name_the_problem(wav2lip_files, tmp_path):
    _, root = wav2lip_files
    broken = tmp_path / "broken"
    (broken / "full_imgs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="coords.pkl"):
        load_lip_avatar(broken)
    with (broken / "coords.pkl").open("wb") as f:
        pickle.dump([(0, 10, 0, 10)], f)
    with pytest.raises(ValueError, match="no numbered images"):
        load_lip_avatar(broken)


def test_paste_back_changes_only_the_mouth_area_without_a_seam():
    frame = np.full((300, 300, 3), 120, np.uint8)
    face = np.full((256, 256, 3), 200, np.uint8)
    out = paste_face(frame, face, (50, 250, 50, 250))
    assert (out[:50] == 120).all() and (out[:, :50] == 120).all()  # outside the box: untouched
    assert (out[60:130, 60:240] == 120).all()  # upper face: the photo's own (eyes stay sharp)
    assert out[200, 150, 0] == 200  # lower middle: the model's mouth
    # A soft edge: from the box border inwards the value climbs gradually, no jump.
    column = out[150:250, 150, 0].astype(int)
    assert np.abs(np.diff(column)).max() <= 12


def test_server_streams_wav2lip_speech_to_a_peer(wav2lip_files):
    checkpoint, root = wav2lip_files
    srv = RunningServer([
        "--model", "wav2lip", "--model_path", str(checkpoint), "--avatar_root", str(root),
        "--avatar_id", "w2l_test", "--batch_size", "4", "--max_session", "1",
    ])
    try:
        y1, y2, x1, x2 = srv.live.model.avatar.coords[0]
        box = (x1 - SWAY_PX, (y1 + y2) // 2 - SWAY_PX, x2 + SWAY_PX, y2 + SWAY_PX)

        async def scenario():
            async with aiohttp.ClientSession() as http:
                peer = LivePeer(srv.url, box)
                await peer.connect(http)
                await peer.wait_for_media()
                await asyncio.sleep(2.0)  # the video encoder's quality settles
                rest = peer.video[-1].mouth
                sent = time.monotonic()
                # Long enough (about 5 s) for a CPU far slower than real time to render some frames.
                text = "Hello there. This is a longer test of lip sync, with a second sentence to say."
                async with http.post(srv.url + "/human", json={"sessionid": peer.sessionid, "text": text}) as r:
                    assert r.status == 200
                session = srv.live.sessions[peer.sessionid]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(a.rms > SPEECH_RMS for a in peer.audio_since(sent)):
                    await asyncio.sleep(0.05)
                while time.monotonic() < deadline and session.is_speaking:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                video, audio = peer.video_since(sent), peer.audio_since(sent)
                await peer.close()
            return rest, video, audio

        rest, video, audio = asyncio.run(scenario())
        assert any(a.rms > SPEECH_RMS for a in audio), "no speech audio"
        changes = [mouth_change(v.mouth, rest) for v in video]
        # Idle frames are the avatar's own (they differ by < 0.01 here); the model's mouths replace
        # them during speech (random weights: anything but the photo).
        assert max(changes) > 3.0, max(changes)
        assert video[-1].size == (512, 512)
    finally:
        srv.stop()
