"""An avatar task request's fields and video, read and checked before any task exists.

POST /api/avatar/task arrives as a multipart form, a urlencoded form or JSON; every one is
reduced to a dict of strings first (`json_fields` for JSON) so that one set of parsers checks
them all, and every refusal is an ApiError(400) that names the field and what it should be.
Each model's genavatar options are checked here too, and an option of another model is
refused rather than ignored, so a caller is never left believing it took effect.

The video is checked by its content, never its name: `sniff` knows the leading bytes of the
containers and images OpenCV reads, and `probe` then decodes one frame, so a text file named
.mp4 is refused before a decoder sees it and an unreadable video before a task is queued.
A path the caller names (video_path, ultralight's checkpoint) must resolve inside one folder
(`inside`). Nothing here holds state: the task API (avatar_tasks) owns the tasks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from avatar_build import AvatarError, read_frames
from avatars import NAME
from httpapi import ApiError
from safetext import shown

MODELS = ("portrait", "wav2lip", "musetalk", "ultralight")
MAX_FIELDS = 32
URL_LIMIT = 2048
SNIFF_BYTES = 512  # enough for every container's signature (MPEG-TS needs two 188-byte packets)

# Each model's genavatar options (the makers' flags); another model's option is refused, so a
# caller is never left believing it took effect.
OPTIONS = {
    "portrait": ("size",),
    "wav2lip": ("img_size", "pads", "nosmooth"),
    "musetalk": ("bbox_shift", "extra_margin", "parsing_mode"),
    "ultralight": ("checkpoint",),
}
PARSING_MODES = ("jaw", "raw", "neck")  # musetalk.genavatar's, without importing torch here
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
# Leading bytes of the containers and images OpenCV reads: (offset, signature, suffix to read
# the file by). Anything else (a text file named .mp4) is refused before any decoder sees it.
SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (0, b"\xff\xd8\xff", ".jpg"),
    (0, b"BM", ".bmp"),
    (0, b"II*\x00", ".tif"),
    (0, b"MM\x00*", ".tif"),
    (4, b"ftyp", ".mp4"),
    (4, b"moov", ".mov"),
    (4, b"mdat", ".mov"),
    (4, b"wide", ".mov"),
    (4, b"free", ".mov"),
    (0, b"\x1a\x45\xdf\xa3", ".mkv"),
    (0, b"FLV\x01", ".flv"),
    (0, b"\x00\x00\x01\xba", ".mpg"),
    (0, b"\x00\x00\x01\xb3", ".mpg"),
    (0, b"OggS", ".ogv"),
    (0, b"GIF87a", ".gif"),
    (0, b"GIF89a", ".gif"),
)
RIFF_KINDS = {b"AVI ": ".avi", b"WEBP": ".webp"}


# --- form fields -------------------------------------------------------------------------------
def parse_int(fields: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """Field `name` as an integer in [low, high]; `default` when empty."""
    text = fields.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"field '{name}' must be an integer, got {shown(text)}") from None
    if not low <= value <= high:
        raise ApiError(400, f"field '{name}' must be between {low} and {high}, got {value}")
    return value


def parse_bool(fields: dict[str, str], name: str) -> bool:
    """Field `name` as a switch (1/0, true/false, yes/no, on/off); empty is false."""
    text = fields.get(name, "").strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ApiError(400, f"field '{name}' must be true or false, got {shown(text)}")


def parse_pads(fields: dict[str, str]) -> list[int]:
    """wav2lip's pads as "0 10 0 0", "0,10,0,0" or a JSON list: top, bottom, left, right."""
    text = fields.get("pads", "").strip().strip("[]")
    if not text:
        return [0, 10, 0, 0]
    parts = [p for p in re.split(r"[\s,]+", text) if p]
    try:
        pads = [int(p) for p in parts]
    except ValueError:
        pads = []
    if len(pads) != 4 or not all(0 <= p <= 256 for p in pads):
        raise ApiError(400, f"field 'pads' must be 4 integers 0-256 (top bottom left right), got {shown(text)}")
    return pads


def parse_choice(fields: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    """Field `name` as one of `choices`; the first when empty."""
    value = fields.get(name, "").strip() or choices[0]
    if value not in choices:
        raise ApiError(400, f"field '{name}' must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def parse_notifyurl(fields: dict[str, str]) -> str | None:
    """The webhook address: an http(s) URL with a host, or None when not given."""
    url = fields.get("notifyurl", "").strip()
    if not url:
        return None
    if len(url) > URL_LIMIT:
        raise ApiError(400, f"field 'notifyurl' is {len(url)} characters; the limit is {URL_LIMIT}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ApiError(400, f"field 'notifyurl' is not a URL: {shown(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, f"field 'notifyurl' must be an http(s) URL, got {shown(url)}")
    return url


def parse_avatar_id(fields: dict[str, str]) -> str:
    """The new avatar's folder name under the avatar root."""
    value = fields.get("avatar_id", "")
    if not value:
        raise ApiError(400, "missing field 'avatar_id'")
    if not NAME.fullmatch(value):  # the avatar registry's names: a folder, never a path
        raise ApiError(400, f"field 'avatar_id' must be 1-64 letters, digits, '_' or '-', got {shown(value)}")
    return value


def check_options_belong(fields: dict[str, str], model: str) -> None:
    """Refuse a genavatar option of a model other than `model`."""
    for other, names in OPTIONS.items():
        for name in names:
            if other != model and fields.get(name, "").strip():
                raise ApiError(400, f"field '{name}' is an option of model {other}, not of {model}; "
                                    f"{model}'s are: {', '.join(OPTIONS[model])}")


def model_options(fields: dict[str, str], model: str) -> dict[str, Any]:
    """The validated genavatar options of `model` (ultralight's checkpoint is checked apart)."""
    check_options_belong(fields, model)
    if model == "portrait":
        return {"size": parse_int(fields, "size", 512, 64, 2048)}
    if model == "wav2lip":
        return {"img_size": parse_int(fields, "img_size", 256, 16, 1024), "pads": parse_pads(fields),
                "nosmooth": parse_bool(fields, "nosmooth")}
    if model == "musetalk":
        return {"bbox_shift": parse_int(fields, "bbox_shift", 0, -200, 200),
                "extra_margin": parse_int(fields, "extra_margin", 10, 0, 200),
                "parsing_mode": parse_choice(fields, "parsing_mode", PARSING_MODES)}
    return {}


def json_fields(body: dict[str, Any]) -> dict[str, str]:
    """A JSON body's fields as the form's strings (true -> "true", [0, 10, 0, 0] -> "0 10 0 0")."""
    fields: dict[str, str] = {}
    for key, value in list(body.items())[:MAX_FIELDS]:
        if isinstance(value, bool):
            fields[key] = "true" if value else "false"
        elif isinstance(value, list):
            fields[key] = " ".join(str(v) for v in value)
        elif value is not None:
            fields[key] = str(value)
    return fields


# --- files -------------------------------------------------------------------------------------
def inside(root: Path, value: str, what: str) -> Path:
    """`value` (relative to `root`, or absolute) as a real path inside `root`, symbolic links
    followed before the check; 400 otherwise."""
    if not value or "\x00" in value:
        raise ApiError(400, f"field '{what}' is empty")
    real_root = root.resolve()
    path = (real_root / value).resolve()
    if not path.is_relative_to(real_root):
        raise ApiError(400, f"field '{what}' must name a file inside --avatar_video_dir, got {shown(value)}")
    if not path.is_file():
        raise ApiError(400, f"field '{what}': no file {shown(value)} in --avatar_video_dir")
    return path


def sniff(head: bytes) -> str | None:
    """The suffix to read a file by, from its first bytes; None: neither a video nor an image."""
    if head[:4] == b"RIFF":
        return RIFF_KINDS.get(head[8:12])
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return ".ts"  # MPEG transport stream: a sync byte every 188 bytes
    for offset, signature, suffix in SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return suffix
    return None


def probe(path: Path, shown_as: str) -> tuple[str, int | None]:
    """Check that `path` is a video or image with a readable frame (blocking: off the loop);
    its kind by signature and the frame count if known. AvatarError says what is wrong."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    kind = sniff(head)
    if kind is None:
        raise AvatarError(f"{shown_as} is neither a video nor an image (its content is not a known format)")
    frames, count = read_frames(path)
    first_of(frames)
    return kind, count


def first_of(frames: Iterator[np.ndarray]) -> np.ndarray | None:
    """The first frame; a video's reader is closed after it (which releases its decoder: a
    generator that never started would keep it until collected)."""
    frame = next(frames, None)
    close = getattr(frames, "close", None)  # an image's frames are a plain iterator
    if close is not None:
        close()
    return frame


def with_kind(path: Path, kind: str) -> Path:
    """An upload renamed to the suffix its content has: read_frames reads images by suffix."""
    target = path.with_suffix(kind)
    path.rename(target)
    return target

