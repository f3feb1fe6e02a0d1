"""Recording a session to an mp4 (H.264 + AAC), upstream's /record.

The file is written as `<sessionid>.mp4.part` beside its final name and renamed when the
recording ends, so a download sees the previous complete file or the new complete file,
never a half-written one. A recording that fails leaves no part behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from outputs.avmux import AVMux
from outputs.base import ThreadedOutput
from outputs.tap import Media

log = logging.getLogger(__name__)

DEFAULT_RECORD_DIR = Path(__file__).resolve().parent.parent / "data" / "records"


def record_dir(opt: object) -> Path:
    return Path(getattr(opt, "record_dir", None) or DEFAULT_RECORD_DIR)


def record_path(opt: object, sessionid: int) -> Path:
    """Where session `sessionid`'s finished recording lies (an int: no request text reaches the path)."""
    return record_dir(opt) / f"{int(sessionid)}.mp4"


class Recorder(ThreadedOutput):
    kind = "record"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.path = record_path(self.opt, self.sessionid)
        self._part = self.path.with_name(self.path.name + ".part")
        self._mux: AVMux | None = None
        self.completed = False

    def describe(self) -> str:
        return str(self.path)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._mux = AVMux(str(self._part), "mp4", self.picture_size(), live=False)

    def write(self, item: Media) -> None:
        assert self._mux is not None
        self._mux.write(item)

    def finish(self, completed: bool) -> None:
        mux, self._mux = self._mux, None
        try:
            if mux is not None:
                mux.close(flush=completed)
            if completed and mux is not None and mux.pictures:
                os.replace(self._part, self.path)
                self.completed = True
                self.tell("finished", f"{mux.pictures / 25:.1f} s in {self.path}")
                return
        except Exception:
            log.exception("session %s: finishing the recording failed", self.sessionid)
        self._part.unlink(missing_ok=True)
