"""Embedded default model "portrait": a CPU talking portrait made from one photo.

It needs no learned lip-sync weights: audio energy and spectral shape drive a landmark-guided
warp of the mouth, and idle life (blinks, head sway) keeps the face from looking frozen.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FEATURE_DIM", "PortraitAvatar", "PortraitRenderer", "frame_features"]


def __getattr__(name: str) -> Any:
    # Lazy so that `python -m portrait.make_avatar` does not load the renderer and vice versa.
    if name in ("FEATURE_DIM", "frame_features"):
        from portrait import features

        return getattr(features, name)
    if name in ("PortraitAvatar", "PortraitRenderer"):
        from portrait import render

        return getattr(render, name)
    raise AttributeError(f"module 'portrait' has no attribute {name!r}")
