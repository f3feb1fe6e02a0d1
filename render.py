"""Render a whole audio file through a model into a video, offline and deterministically.

    python -m render --model musetalk --avatar_id me --audio speech.wav --out talk.mp4

Any model (and its own flags, see --model NAME --help). The audio goes through the same
window, features, inference and paste-back as a live session, but every frame is rendered
(nothing is skipped for time), so the same input gives the same video. H.264 + AAC in an
MP4, 25 fps, the sound and the picture of each 40 ms together. Written to a temporary file
beside --out and renamed when complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from audio_util import split_chunks
from baseasr import AUDIO_FRAMES_PER_VIDEO_FRAME, CHUNK, SAMPLE_RATE, BaseASR
from basereal import LipModel, Renderer

log = logging.getLogger("render")

FPS = 25
MAX_AUDIO_BYTES = 1 << 30
VIDEO_BITRATE = 2_000_000
MAX_BATCH = 100  # a batch and its look-ahead must fit the audio window's queue (250 frames)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from app import MODELS, add_model_arguments

    p = argparse.ArgumentParser(prog="python -m render", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="portrait", help=f"lip-sync model: {', '.join(MODELS)} (default portrait)")
    p.add_argument("--avatar_id", default=None, help="folder under data/avatars (default: the model's own)")
    p.add_argument("--avatar_root", default=None, help="where avatar folders live (default data/avatars)")
    p.add_argument("--models_dir", default=None, help="where model files live (default models)")
    p.add_argument("--audio", required=True, help="speech to render (wav, flac, mp3, ogg, m4a ...)")
    p.add_argument("--out", required=True, help="the video to write (.mp4)")
    p.add_argument("--batch_size", type=int, default=None, help="video frames inferred together (default: per model)")
    p.add_argument("-l", type=int, default=10, help="audio left context in 20 ms frames (default 10)")
    p.add_argument("-r", type=int, default=10, help="audio right context in 20 ms frames (default 10)")
    add_model_arguments(p, argv)
    opt = p.parse_args(argv)
    if opt.batch_size is not None and not 1 <= opt.batch_size <= MAX_BATCH:
        p.error(f"--batch_size must be 1 to {MAX_BATCH}")
    return opt


def frames_of(model: LipModel, chunks: list[np.ndarray], batch: int, left: int, right: int,
              progress: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(BGR frame, its 640 audio samples) for every 40 ms of `chunks`, through a session's
    own window and renderer, with the right look-ahead always filled with the real audio."""
    asr: BaseASR = model.make_asr(left, right)
    renderer: Renderer = model.renderer(0)
    n_video = -(-len(chunks) // AUDIO_FRAMES_PER_VIDEO_FRAME)
    n_batches = -(-n_video // batch)
    padded = chunks + [np.zeros(CHUNK, np.float32)] * (n_batches * batch * AUDIO_FRAMES_PER_VIDEO_FRAME - len(chunks))
    fed = 0
    try:
        with tqdm(total=n_video, desc="rendering", unit="frame", disable=not progress) as bar:
            for b in range(n_batches):
                # Queue this batch and its look-ahead, so the window never pads with filler.
                want = min(len(padded), (b + 1) * batch * AUDIO_FRAMES_PER_VIDEO_FRAME + right)
                while fed < want:
                    asr.put_audio_frame(padded[fed])
                    fed += 1
                audio, window = asr.get_window(batch)
                indices = list(range(b * batch, (b + 1) * batch))
                if window is None:
                    images = [renderer.idle_frame(i) for i in indices]
                else:
                    preds = renderer.infer(asr.features(window, left, right, batch), indices)
                    images = [renderer.paste_back(p, i) for p, i in zip(preds, indices, strict=True)]
                for k, (image, index) in enumerate(zip(images, indices, strict=True)):
                    if index >= n_video:
                        return
                    pair = audio[AUDIO_FRAMES_PER_VIDEO_FRAME * k : AUDIO_FRAMES_PER_VIDEO_FRAME * (k + 1)]
                    yield image, np.concatenate([f.samples for f in pair])
                    bar.update(1)
    finally:
        asr.close()


def write_video(frames: Iterator[tuple[np.ndarray, np.ndarray]], out: Path) -> int:
    """Encode to `out` (H.264 + AAC); returns the number of video frames."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}{out.suffix}"
    count = 0
    try:
        with av.open(str(work), "w") as container:
            video = audio = None
            for image, samples in frames:
                if video is None:
                    h, w = image.shape[:2]
                    video = container.add_stream("libx264", rate=FPS)
                    video.width, video.height = w - w % 2, h - h % 2
                    video.pix_fmt = "yuv420p"
                    video.bit_rate = VIDEO_BITRATE
                    video.options = {"preset": "veryfast"}
                    audio = container.add_stream("aac", rate=SAMPLE_RATE)
                    audio.layout = "mono"
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: video.height, : video.width]),
                                                   format="bgr24")
                frame.pts = count
                frame.time_base = Fraction(1, FPS)
                container.mux(video.encode(frame))
                sound = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None], format="flt", layout="mono")
                sound.sample_rate = SAMPLE_RATE
                sound.pts = count * len(samples)
                sound.time_base = Fraction(1, SAMPLE_RATE)
                container.mux(audio.encode(sound))
                count += 1
            if video is None:
                raise ValueError("the audio is empty: nothing to render")
            container.mux(video.encode(None))
            container.mux(audio.encode(None))
        work.rename(out)
    finally:
        work.unlink(missing_ok=True)
    return count


def render(opt: argparse.Namespace, progress: bool = True) -> int:
    from app import model_class
    from audio_util import decode_audio_bytes

    path = Path(opt.audio)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.stat().st_size > MAX_AUDIO_BYTES:
        raise ValueError(f"{path} is larger than {MAX_AUDIO_BYTES >> 20} MB")
    speech = decode_audio_bytes(path.read_bytes(), path.name)
    cls = model_class(opt.model)
    if opt.avatar_id is None:
        opt.avatar_id = cls.default_avatar_id
    model = cls.load(opt)
    batch = opt.batch_size or model.default_batch_size
    frames = frames_of(model, split_chunks(speech), batch, opt.l, opt.r, progress)
    count = write_video(frames, Path(opt.out))
    log.info("wrote %s: %d frames, %.2f s", opt.out, count, count / FPS)
    return count


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opt = parse_args(argv)
    try:
        render(opt)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(opt.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
