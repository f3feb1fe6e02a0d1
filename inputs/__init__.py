"""The input side of a session: the user's microphone, heard and understood.

    mic track (WebRTC) -> 16 kHz mono -> Silero VAD -> utterances -> speech-to-text (stt/)
        -> the transcript to the chat or spoken back, and barge-in over the avatar's voice

`voice.VoiceInput` owns one session's listening; the other modules each do one job of it.
"""
