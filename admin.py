"""The operator's view of the running service (stub, filled in by its owner)."""

from __future__ import annotations

from typing import Any


class AdminApi:
    def __init__(self, live: Any) -> None:
        self.live = live

    def add_routes(self, route: Any) -> None:
        """`route(method, path, handler)` adds an admin-guarded route."""
        return None
