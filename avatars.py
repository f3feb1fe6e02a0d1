"""Avatars chosen per session: names checked, folders loaded once, a bounded cache shared by
every session of the running model.

A request names an avatar by its folder name under the avatar root (upstream V2's `avatar`
field). Loading one takes seconds for a long video's frames, so it happens off the event loop,
once: a second session asking for the same avatar while it loads waits for that load. The
cache keeps at most `capacity` avatars besides the one the server started with (which never
leaves); the least recently used goes first. A session holds its avatar while it shows it, so
an avatar evicted here stays in memory only as long as some session still shows it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from basereal import LipModel

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_CAPACITY = 4


class AvatarRefused(ValueError):
    """A name that is not an avatar of the running model (a 400 for the caller)."""


def check_name(value: Any) -> str:
    """An avatar name: a plain identifier, never a path."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise AvatarRefused("field 'avatar' must be an avatar folder's name: 1-64 letters, digits, '_' or '-'")
    return value


class AvatarCache:
    """Avatars of `model` under `root` by name, loaded on first use (blocking: call off-loop)."""

    def __init__(self, model: LipModel, root: Path, default_id: str, capacity: int = DEFAULT_CAPACITY) -> None:
        self.model = model
        self.root = Path(root)
        self.default_id = default_id
        self.capacity = max(0, capacity)
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # guards _loaded and _loading
        self._loading: dict[str, threading.Lock] = {}  # one load at a time per name
        self.loads = 0  # folders read from disk, for tests and the admin
        self._generation = 0  # bumped by forget(): a load begun before it is not cached

    def folder(self, name: str) -> Path:
        """The folder of avatar `name`, refused unless it is a folder inside the root (a
        symbolic link out of it is refused too)."""
        name = check_name(name)
        root = self.root.resolve()
        path = (self.root / name).resolve()
        if path.parent != root or not path.is_dir():
            raise AvatarRefused(f"no avatar '{name}' among this server's avatar folders (--avatar_root)")
        return path

    def get(self, name: str) -> Any:
        """The loaded avatar `name`; AvatarRefused when it is not one of this model's."""
        name = check_name(name)
        if name == self.default_id:
            return self.model.avatar
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # a second caller waits here for the first one's load
            with self._lock:
                if name in self._loaded:
                    return self._loaded[name]
                generation = self._generation
            try:
                avatar = self._load(name)
            except BaseException:
                with self._lock:
                    self._loading.pop(name, None)
                raise
            with self._lock:  # cached and no longer loading at once: no caller loads it twice
                self._loading.pop(name, None)
                if generation == self._generation:  # else a folder was replaced while it loaded
                    self._loaded[name] = avatar
                while len(self._loaded) > self.capacity:
                    evicted, _ = self._loaded.popitem(last=False)
                    log.info("avatar %s left the cache (--max_avatars %d)", evicted, self.capacity)
            return avatar

    def _load(self, name: str) -> Any:
        folder = self.folder(name)
        started = time.perf_counter()
        try:
            avatar = self.model.load_avatar(folder)
        except (FileNotFoundError, ValueError, OSError) as exc:
            why = str(exc).replace(str(folder), name)  # a caller learns no server paths
            raise AvatarRefused(f"avatar '{name}' is not a {self.model.name} avatar: {why}") from None
        self.loads += 1
        log.info("avatar %s loaded for %s in %.1fs", name, self.model.name, time.perf_counter() - started)
        return avatar

    def forget(self, name: str) -> None:
        """Drop a cached avatar whose folder was replaced (sessions showing it keep their copy)."""
        with self._lock:
            self._loaded.pop(name, None)
            self._generation += 1

    def cached(self) -> list[str]:
        with self._lock:
            return [self.default_id, *self._loaded]
