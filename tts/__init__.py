"""The online and self-hosted TTS engines (upstream LiveTalking's --tts choices), streamed.

Each module is one engine speaking its server's real protocol; `http_stream` holds what they
share: the network I/O loop, error messages, and reading a response as audio while it arrives.
ttsreal.load_tts_engine imports a module only when its engine is chosen.
"""
