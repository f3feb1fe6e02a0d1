"""Azure AI Speech through its REST text-to-speech endpoint.

    POST https://<AZURE_TTS_REGION>.tts.speech.microsoft.com/cognitiveservices/v1
    Ocp-Apim-Subscription-Key: AZURE_SPEECH_KEY, X-Microsoft-OutputFormat, SSML body

Upstream drove the Speech SDK (a native library) over its websocket; the REST endpoint gives
the same voices with the same keys, streams the audio as a chunked response while it is
synthesised, and needs no native dependency. We ask for 16 kHz 16-bit mono PCM, the
pipeline's own rate, so nothing is resampled.
"""

from __future__ import annotations

from collections.abc import Iterator
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from audio_stream import PcmDecoder
from tts.base import CloudEngine
from tts.http_stream import AudioStream, Emit, stream_request
from ttsreal import Voice

OUTPUT_FORMAT = "raw-16khz-16bit-mono-pcm"
SAMPLE_RATE = 16000


class AzureEngine(CloudEngine):
    name = "azuretts"
    env = ("AZURE_SPEECH_KEY", "AZURE_TTS_REGION")
    default_voice_name = "zh-CN-XiaoxiaoMultilingualNeural"

    def __init__(
        self, voice: str | None = None, keys: dict[str, str | None] | None = None, url: str | None = None
    ) -> None:
        super().__init__(voice, keys)
        self.url = url  # None: the region's endpoint

    def endpoint(self, region: str) -> str:
        return self.url or f"https://{region}.tts.speech.microsoft.com/cognitiveservices/v1"

    def synthesize(self, text: str, voice: Voice | None = None) -> Iterator[tuple[np.ndarray, int]]:
        keys = self.require_keys()
        url = self.endpoint(keys["AZURE_TTS_REGION"])
        headers = {
            "Ocp-Apim-Subscription-Key": keys["AZURE_SPEECH_KEY"],
            "Content-Type": "application/ssml+xml",
            "X-Microsoft-OutputFormat": OUTPUT_FORMAT,
            "User-Agent": "LiveTalking",
        }
        body = ssml(text, self.voice_name(voice)).encode("utf-8")

        async def produce(emit: Emit) -> None:
            await stream_request(self.name, "POST", url, emit, data=body, headers=headers)

        return AudioStream(self.name, produce, PcmDecoder(SAMPLE_RATE, label=f"{self.name} PCM"))


def ssml(text: str, voice: str) -> str:
    """One voice speaking the text; xml:lang from the voice name ("zh-CN-..." -> "zh-CN")."""
    lang = "-".join(voice.split("-")[:2]) if voice.count("-") >= 2 else "en-US"
    return (
        f"<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang={quoteattr(lang)}>"
        f"<voice name={quoteattr(voice)}>{escape(text)}</voice></speak>"
    )
