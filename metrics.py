"""Prometheus text exposition format 0.0.4: a small writer, and a histogram of fixed buckets.

Only what /metrics needs: gauges, counters (their names end in `_total`) and histograms, each
family written whole (HELP, TYPE, then its samples) so that scrapers and parsers accept it.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = Mapping[str, str]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a point, +Inf/-Inf/NaN spelled out."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Histogram:
    """Observations counted into fixed upper bounds (seconds, say); memory does not grow with them."""

    def __init__(self, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds != sorted(set(bounds)) or math.isinf(bounds[-1]):
            raise ValueError("histogram buckets must be distinct finite numbers (+Inf is added)")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            return  # NaN would poison _sum for good
        self._counts[bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound is in it
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (+Inf, count)."""
        total, out = 0, []
        for bound, n in zip([*self.bounds, math.inf], self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Exposition:
    """A /metrics body, one family at a time."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: set[str] = set()

    def gauge(self, name: str, help_text: str, samples: float | Iterable[tuple[Labels, float]]) -> None:
        self._family(name, "gauge", help_text)
        self._samples(name, samples)

    def counter(self, name: str, help_text: str, samples: float | Iterable[tuple[Labels, float]]) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        self._family(name, "counter", help_text)
        self._samples(name, samples)

    def histogram(self, name: str, help_text: str, histogram: Histogram) -> None:
        self._family(name, "histogram", help_text)
        for bound, count in histogram.cumulative():
            self._sample(f"{name}_bucket", {"le": format_value(bound)}, count)
        self._sample(f"{name}_sum", {}, histogram.sum)
        self._sample(f"{name}_count", {}, histogram.count)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"

    def _family(self, name: str, kind: str, help_text: str) -> None:
        if not _NAME.fullmatch(name) or name in self._names:
            raise ValueError(f"bad or repeated metric name {name!r}")
        self._names.add(name)
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def _samples(self, name: str, samples: float | Iterable[tuple[Labels, float]]) -> None:
        if isinstance(samples, (int, float)):
            self._sample(name, {}, samples)
            return
        for labels, value in samples:
            self._sample(name, labels, value)

    def _sample(self, name: str, labels: Labels, value: float) -> None:
        if labels:
            for key in labels:
                if not _LABEL.fullmatch(key):
                    raise ValueError(f"bad label name {key!r}")
            inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            self._lines.append(f"{name}{{{inner}}} {format_value(value)}")
        else:
            self._lines.append(f"{name} {format_value(value)}")
