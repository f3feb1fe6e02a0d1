"""Where a session's pictures and sound go besides the page's WebRTC peer.

Each output is one module with one Output subclass, and one line here. `--transport NAME`
opens a background session with that output at start-up; POST /session, /push and /record
add them to any session. Modules are imported only when used, so an output's packages
(pyvirtualcam, say) are needed only by those who use it.
"""

from __future__ import annotations

import importlib

from outputs.base import Output, OutputError

# name -> "module:Output subclass"
OUTPUTS = {
    "record": "outputs.record:Recorder",
    "rtmp": "outputs.rtmp:RtmpPush",
    "rtcpush": "outputs.whip:WhipPush",
    "virtualcam": "outputs.virtualcam:VirtualCamera",
}


def output_class(kind: str) -> type[Output]:
    """The Output class registered as `kind`; OutputError naming the known ones."""
    if kind not in OUTPUTS:
        raise OutputError(f"unknown output '{kind[:40]}'; choose one of: {', '.join(OUTPUTS)}")
    module_name, class_name = OUTPUTS[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise OutputError(f"output {kind} needs the Python package '{exc.name}'; run ./setup.sh", 501) from None
    return getattr(module, class_name)
