"""WebRTC output: a peer's audio and video tracks, fed by the session's clock.

Each peer (the page's, a WHEP viewer's, a WHIP push) gets its own pair of tracks, each with its
own tap on the session's clock (outputs.player): the session renders once and every peer
encodes for itself. A track's tap is short, so a peer whose encoder or network falls behind
skips to the newest media instead of sending it late: a picture is worthless once its sound
has played, and sound more than MAX_AUDIO_LAG_S late is skipped.

The sound is encoded to Opus here, on the event loop (80 us per packet), and handed to aiortc
as packets: aiortc would encode each 20 ms frame in the default thread pool, where it queues
behind every VP8 encode and anything else that pool runs, and the sound then falls behind.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import logging
import time
from typing import Any

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from baseasr import CHUNK, SAMPLE_RATE
from outputs.player import FPS, MAX_AUDIO_LAG_S, PACKET_SECONDS, VIDEO_CLOCK, HumanPlayer
from outputs.tap import Picture, Sound, Tap
from safetext import shown

log = logging.getLogger(__name__)

OPUS_BITRATE = 32000  # 16 kHz mono speech: Opus wideband is transparent well below this
VIDEO_TAP = 2  # pictures a video track may hold: one being encoded, the next
AUDIO_TAP = round(MAX_AUDIO_LAG_S / PACKET_SECONDS)  # packets an audio track may hold
_ERROR_LOG_EVERY_S = 5.0
SDP_LIMIT = 32 * 1024  # a browser's offer is 3-8 KB
SDP_MAX_MEDIA = 4  # m= sections: the page sends two (video and audio)
SDP_MAX_CANDIDATES = 64  # each remote candidate costs ICE checks


class OpusPackets:
    """20 ms of 16 kHz mono PCM in, one Opus packet out, timed by its packet number."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = SAMPLE_RATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.bit_rate = OPUS_BITRATE
        codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
        codec.options = {"application": "voip"}
        codec.open()
        self._codec = codec

    def encode(self, pcm: np.ndarray, index: int) -> av.Packet:
        frame = av.AudioFrame(format="s16", layout="mono", samples=CHUNK)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = SAMPLE_RATE
        frame.pts = index * CHUNK
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        packets = self._codec.encode(frame)
        # libopus gives exactly one packet per 20 ms frame; its own pts carries the encoder's
        # look-ahead, so the packet is stamped with the frame's place on the clock instead.
        packet = packets[0] if packets else av.Packet(b"")
        packet.pts = index * CHUNK
        packet.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return packet


class ClockTrack(MediaStreamTrack):
    """An aiortc track playing one kind of a session's media, from its own tap on the clock.

    The tap is attached at the first `recv` (when the peer is connected and starts sending),
    so a peer that never connects costs the clock nothing. Nothing that goes wrong while
    packing a frame may end the stream: it is logged and the slot is skipped.
    """

    def __init__(self, player: HumanPlayer, kind: str, name: str = "webrtc") -> None:
        super().__init__()
        self.kind = kind
        self._player = player
        video = kind == "video"
        self._tap = Tap(f"{name} {kind}", video=video, audio=not video, limit=VIDEO_TAP if video else AUDIO_TAP,
                        interruptible=True)
        self._attached = False
        self._opus: OpusPackets | None = None
        self._error_logged = 0.0
        self.errors = 0
        # The sound as it leaves for the peer, stamped then: the echo guard's reference. The
        # clock's time would miss how late this track sends on a busy machine, which the echo
        # coming back through the peer's microphone carries.
        self.sent: Tap | None = None

    @property
    def dropped(self) -> int:
        """Items this peer's track skipped because it was behind."""
        return self._tap.dropped

    async def recv(self) -> av.frame.Frame | av.Packet:
        if not self._attached:
            self._attached = True
            self._player.attach(self._tap)
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item = await self._tap.aget()
            if item is None:
                self.stop()
                raise MediaStreamError
            try:
                if isinstance(item, Picture):
                    return picture_frame(item)
                return self._packet(item)
            except Exception:
                self._failed()

    def _packet(self, sound: Sound) -> av.Packet:
        if self._opus is None:
            self._opus = OpusPackets()
        if self.sent is not None:
            self.sent.put(dataclasses.replace(sound, at=time.monotonic()))
        return self._opus.encode(sound.pcm.reshape(1, CHUNK), sound.index)

    def _failed(self) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._error_logged >= _ERROR_LOG_EVERY_S:
            self._error_logged = now
            log.exception("%s track: packing media failed; playing on (%d errors so far)", self.kind, self.errors)

    def stop(self) -> None:
        super().stop()
        self._player.detach(self._tap)


def session_tracks(player: HumanPlayer, name: str = "webrtc") -> tuple[ClockTrack, ClockTrack]:
    """A new (audio, video) pair for one peer of the session."""
    return ClockTrack(player, "audio", name), ClockTrack(player, "video", name)


def picture_frame(picture: Picture) -> av.VideoFrame:
    i420 = picture.i420  # converted once for every peer of the session
    frame = video_frame(picture.image) if i420 is None else av.VideoFrame.from_ndarray(i420, format="yuv420p")
    frame.pts = picture.slot * (VIDEO_CLOCK // FPS)
    frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
    return frame


def video_frame(image: np.ndarray) -> av.VideoFrame:
    """A frame in the encoder's own format: OpenCV converts to I420 (BT.601, studio range, as
    FFmpeg would) in 0.2 ms where the encoder's converter takes 1.1 ms (512x512)."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        return av.VideoFrame.from_ndarray(image, format="bgr24")
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")


def parse_ice_servers(stun: str | None, ice_servers: str | None) -> list[dict[str, Any]]:
    """The ICE servers of `--stun URL` and `--ice_servers JSON` (a list of {"urls", "username",
    "credential"}, as a browser's RTCPeerConnection takes them); ValueError saying what is wrong.

    Each URL must be one both ends can use: aiortc's parser takes it (a browser's takes the same
    forms), and a turn:/turns: server has a username and credential (a browser's RTCPeerConnection
    refuses to be made without them)."""
    servers: list[dict[str, Any]] = []
    if stun:
        _check_ice_url(stun, "--stun")
        if not stun.startswith("stun:"):
            raise ValueError(f"--stun must be a stun: URL, got {stun[:80]!r}")
        servers.append({"urls": [stun]})
    if ice_servers:
        try:
            given = json.loads(ice_servers)
        except ValueError as exc:
            raise ValueError(f"--ice_servers is not JSON: {exc}") from None
        if not isinstance(given, list):
            raise ValueError("--ice_servers must be a JSON list of {urls, username, credential}")
        for entry in given:
            if not isinstance(entry, dict) or "urls" not in entry:
                raise ValueError(f"--ice_servers entry {str(entry)[:80]} has no 'urls'")
            urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
            if not urls or not all(isinstance(u, str) and u.split(":", 1)[0] in ("stun", "turn", "turns")
                                   for u in urls):
                raise ValueError(f"--ice_servers urls must be stun:, turn: or turns: URLs, got {str(urls)[:80]}")
            for url in urls:
                _check_ice_url(url, "--ice_servers")
            unknown = set(entry) - {"urls", "username", "credential"}
            if unknown:
                raise ValueError(f"--ice_servers entry has unknown keys {sorted(unknown)}")
            if any(u.startswith("turn") for u in urls) and not all(
                    isinstance(entry.get(k), str) and entry[k] for k in ("username", "credential")):
                raise ValueError(f"--ice_servers entry with TURN urls {str(urls)[:80]} needs a username and a "
                                 f"credential")
            servers.append({"urls": urls, **{k: str(entry[k]) for k in ("username", "credential") if k in entry}})
    return servers


def _check_ice_url(url: str, flag: str) -> None:
    from aiortc.rtcicetransport import parse_stun_turn_uri

    try:
        parse_stun_turn_uri(url)
    except ValueError as exc:
        raise ValueError(f"{flag}: {url[:80]!r} is not a STUN/TURN URL ({exc}); e.g. stun:host:3478, "
                         f"turn:host:3478, turn:host:3478?transport=tcp") from None


def new_peer(ice_servers: list[dict[str, Any]]) -> RTCPeerConnection:
    """A server-side peer connection that gathers candidates through the configured STUN and
    TURN servers (none: host candidates only, enough on one network). The configuration is
    always given: aiortc's default one asks Google's public STUN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
    ]))


# aiortc's receiver holds 4 audio packets (80 ms) before it decodes the first, to put packets
# that arrive out of order back in order. For the microphone that is 80 ms added to every
# answer and every barge-in, while a VAD and speech-to-text do not mind a rare late packet
# (it is dropped, a 20 ms gap). The buffer is private, so a newer aiortc without it keeps
# the stock one.
MIC_PREFETCH = 0


def hear_promptly(pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
    """Let the peer's incoming audio `track` be decoded as each packet arrives."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver.track is not track:
            continue
        buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if isinstance(buffer, JitterBuffer):
            receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=buffer.capacity, prefetch=MIC_PREFETCH)
        else:
            log.info("aiortc's audio receiver has no jitter buffer to shorten; the mic keeps its own")


def check_offer(sdp: str) -> None:
    """Parse an offer before aiortc does (in the control pool, so a hostile one costs the
    streams nothing), refusing what no browser sends: ValueError saying what is wrong."""
    from aiortc.sdp import SessionDescription

    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line causes
        raise ValueError(f"not an SDP offer ({type(exc).__name__}: {shown(str(exc), 80)})") from None
    if not description.media:
        raise ValueError("the offer has no media section")
    if len(description.media) > SDP_MAX_MEDIA:
        raise ValueError(f"the offer has {len(description.media)} media sections; at most {SDP_MAX_MEDIA}")
    candidates = sum(len(m.ice_candidates) for m in description.media)
    if candidates > SDP_MAX_CANDIDATES:
        raise ValueError(f"the offer has {candidates} ICE candidates; at most {SDP_MAX_CANDIDATES}")
