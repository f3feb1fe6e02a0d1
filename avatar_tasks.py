"""Avatar creation tasks over HTTP (stub, filled in by its owner)."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The avatar task API's flags."""
    return None


class AvatarTasks:
    def __init__(self, opt: argparse.Namespace, model_name: str) -> None:
        self.opt = opt
        self.model_name = model_name

    def add_routes(self, route: Any) -> None:
        """`route(method, path, handler)` adds an admin-guarded route."""
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
