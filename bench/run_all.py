"""Run every benchmark once and write docs/PERFORMANCE.md from their JSON.

    .venv/bin/python bench/run_all.py [--skip e2e] [--only render_fps]

Each benchmark is its own script printing one JSON object; this runner keeps their raw output
in docs/PERFORMANCE.md next to a table of the figures that have targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from machine import machine_name

ROOT = Path(__file__).resolve().parent.parent
BENCHES = {
    "render_fps": ["bench/render_fps.py", "--frames", "500"],
    "e2e": ["bench/e2e.py", "--repeats", "5", "--max_sessions", "6"],
    "wav2lip_speed": ["bench/wav2lip_speed.py"],
    "chat_latency": ["bench/chat_latency.py", "--repeats", "5"],
    "soak": ["bench/soak.py", "--scan", "6", "--seconds", "40", "--minutes", "10", "--hostile"],
    "model_speed": ["bench/model_speed.py"],
    "outputs": ["bench/outputs.py", "--seconds", "8", "--repeats", "5", "--max_sessions", "4"],
    "voice_latency": ["bench/voice_latency.py", "--repeats", "5"],
    "avatars": ["bench/avatars.py", "--repeats", "5"],
}
# (bench, key, label, target, better)
TARGETS = [
    ("render_fps", "fps_median", "portrait render fps, one core, 512x512", 100, "higher"),
    ("e2e", "first_audio_ms", "POST /human to first speech audio at the client (ms)", 400, "lower"),
    ("e2e", "first_mouth_ms", "POST /human to first mouth-moving frame at the client (ms)", None, "lower"),
    ("e2e", "av_offset_ms", "mouth vs audio offset at the client (ms, negative: mouth first)", 40, "abs"),
    ("e2e", "interrupt_to_silence_ms", "interrupt to silence at the client (ms)", 200, "lower"),
    ("e2e", "cpu_idle_session", "server CPU per idle session (cores)", None, "lower"),
    ("e2e", "cpu_speaking_session", "server CPU per speaking session (cores)", None, "lower"),
    ("soak", "speaking_sessions_with_continuous_audio",
     "speaking sessions all heard whole at once (every event, lag < 0.25 s, 49+ packets/s)", 4, "higher"),
    ("soak", "soak_sessions", "sessions admitted by default (--capacity auto, --max_session 4)", None, "higher"),
    ("soak", "soak_audio_lag_max_s", "10 min soak, hostile client alongside: worst audio lag at a peer (s)",
     0.25, "lower"),
    ("soak", "soak_audio_late_s", "10 min soak: sound that arrived over 0.25 s late, all peers (s)", None, "lower"),
    ("soak", "soak_server_audio_lag_max_ms", "10 min soak: worst lag of the sound leaving the server (ms)",
     250, "lower"),
    ("soak", "soak_events_lost", "10 min soak: start/end events lost", 0, "lower"),
    ("soak", "soak_rss_growth_mb", "10 min soak: server RSS growth while speaking (MB)", None, "lower"),
    ("soak", "soak_fds_growth", "10 min soak: open files growth", None, "lower"),
    ("outputs", "cpu_none", "server CPU, a speaking session with no output (cores)", None, "lower"),
    ("outputs", "cpu_webrtc", "... with the page's WebRTC peer (cores)", None, "lower"),
    ("outputs", "cpu_two_webrtc", "... with the page's peer and a WHEP viewer (cores)", None, "lower"),
    ("outputs", "cpu_record", "... recording an mp4 (cores)", None, "lower"),
    ("outputs", "cpu_rtmp", "... pushing RTMP to nginx (cores)", None, "lower"),
    ("outputs", "cpu_whip", "... pushing WHIP (cores)", None, "lower"),
    ("outputs", "first_speech_rtmp_ms", "POST /human to first speech at an RTMP reader through nginx (ms)", None,
     "lower"),
    ("outputs", "first_speech_whep_ms", "POST /human to first speech at a WHEP viewer (ms)", 400, "lower"),
    ("outputs", "sessions_webrtc_and_record", "speaking sessions with a WebRTC viewer and a recording each, all at "
     "24+ fps", None, "higher"),
    ("chat_latency", "clause_to_audio_ms", "LLM's first clause to first speech audio at the client (ms)", 300, "lower"),
    ("voice_latency", "voice_to_answer_ms", "last voiced sample of a spoken question to first answer audio (ms)",
     800, "lower"),
    ("voice_latency", "voice_to_transcript_ms", "last voiced sample to the final transcript event (ms)", None,
     "lower"),
    ("voice_latency", "barge_in_to_silence_ms", "talking over the avatar: first voiced sample to its silence (ms)",
     300, "lower"),
    ("voice_latency", "barge_in_to_event_ms", "... first voiced sample to the barge_in event at the client (ms)", None,
     "lower"),
    ("voice_latency", "cpu_session_no_mic", "server CPU, a connected session without a microphone (cores)", None,
     "lower"),
    ("voice_latency", "cpu_listening_session", "... the same session hearing its microphone (cores)", None, "lower"),
    ("avatars", "avatar_switch_to_frame_ms", "POST /set_avatar to the new avatar's first frame at the viewer (ms)",
     None, "lower"),
    ("avatars", "action_to_frame_ms", "POST /set_audiotype to the clip's first frame at the viewer (ms)", None,
     "lower"),
    ("avatars", "avatar_load_ms", "POST /set_avatar of an avatar not loaded yet (portrait, ms)", None, "lower"),
]


def run(name: str) -> dict | None:
    script = ROOT / BENCHES[name][0]
    if not script.is_file():
        return None
    print(f"running {name} ...", file=sys.stderr, flush=True)
    out = subprocess.run(
        [sys.executable, *BENCHES[name]], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out[out.index("{") :])
    result["measured"] = f"{datetime.date.today().isoformat()} on {machine_name()}"
    return result


NOTES = [
    "- Latencies are taken at the receiving aiortc peer on packet arrival (its 80 ms audio",
    "  prefetch is turned off, as video has none); a browser adds its own playout delay to both.",
    "- Speaking sessions heard whole (bench/soak.py --scan): 1, 2, ... sessions each speak three",
    "  sentences after another for 40 s; a count holds when every peer got every start and end",
    "  event, 49+ audio packets a second, and its sound never arrived more than 0.25 s behind its",
    "  own timestamps. The peers decode the video they receive on the same two cores.",
    "- The soak: the sessions the server admits on its defaults speak for 10 minutes while a",
    "  hostile client sends a refused request every half second (47 MB JSON, 29 MB SDP, text/plain",
    "  offers, lone surrogates, absurd uploads, forged log lines); RSS, open files and threads of",
    "  the server are sampled every 5 s (raw results below). The attacker runs in its own",
    "  process at nice 10 (a real one's CPU is elsewhere); the listening peers do not, and the",
    "  worst lag at a peer includes their own pauses: the sound left the server at most",
    "  `server_audio_lag_max_ms` late. RSS grows once, when the sessions first speak (piper's",
    "  memory arena, one per core), then stays flat.",
    "- Admission measures the machine at start-up, so it follows how fast the machine is then:",
    "  on this shared 2-core machine the same build rendered 300-490 fps on different runs",
    "  of the day and admitted 3 or 4 sessions; the scan is the figure that it holds.",
    "- No GPU machine was lent to this task, so there are no GPU figures yet; `bench/wav2lip_speed.py",
    "  --device cuda` records them (fp16) where one is available.",
    "- Wav2Lip 256 renders 3-4 frames per second on these two cores: a real session then repeats",
    "  frames and renders every n-th one, while its sound stays continuous (tests/test_slow_model.py).",
    "  The bfloat16 path is opt-in (`cpu_bf16`) and used only on CPUs that compute it natively.",
    "- Wav2Lip's convolutions are about 56 GFLOP per frame. The project's fp32 path runs them at",
    "  the conv GFLOP/s shown, and per layer (profiled at batch 1) every convolution runs within a",
    "  few percent of the same rate, so the convolution kernels are at this CPU's fp32 limit: at",
    "  batch 1, where the plain forward is already efficient, only fewer operations (bfloat16,",
    "  Winograd) could go further, and the 1.3x target is missed there.",
    "- The clock's split from WebRTC (one clock per session feeding every output's tap) was timed",
    "  with bench/e2e.py --repeats 5 --max_sessions 4 before (1f143ab) and after, the same day on",
    "  this machine: first audio 191 / 190 ms, A/V offset -6 / -11 ms, interrupt 33 / 36 ms, CPU per",
    "  idle session 0.31 / 0.34 cores, per speaking session 0.55 / 0.48, min fps of 3 speaking",
    "  sessions 16.6 / 22.8, of 4 10.1 / 13.4; both hold 2 speaking sessions at 24+ fps.",
    "- Outputs (bench/outputs.py): CPU is the server process's while one session speaks, per",
    "  output kind, beside the same session with none. The RTMP reader is PyAV through nginx-rtmp",
    "  (nginx forwards at once; the reader's own buffering is part of the figure); the WHEP viewer is",
    "  an aiortc peer timing audio on arrival. The scan adds sessions, each with a WebRTC viewer and a",
    "  recording, while all speak; a count holds when every viewer gets 24+ fps and no slot is missed.",
    "- MuseTalk and Ultralight (bench/model_speed.py) are built at their real sizes with random",
    "  weights. Features are one batch's audio window (-l 10 -r 10); their cost is per batch, so",
    "  small batches pay it more often. MuseTalk's whisper runs on 30 s of mostly padding by",
    "  default, as its checkpoints were trained; `--fast_whisper` encodes only the window. On a",
    "  CPU MuseTalk's time is the UNet and above all the VAE decode (profile line): a session then",
    "  shows a fresh mouth every few seconds while its sound plays on; it needs a GPU.",
    "- Voice (bench/voice_latency.py): an aiortc client says an espeak question as its microphone",
    "  at real-time pace to the real server (Silero VAD, whisper tiny.en int8, Piper), the stand-in",
    "  LLM answering after 300 ms at 30 tokens/s, each word with its leading space as real",
    "  tokenizers stream them (a word is whole only when the next token comes; the stand-in sent",
    "  'Paris ' before 2026-12-07, which let the first words go one token sooner). The answer's",
    "  path after the last voiced packet, from the server's log (2026-12-07): the pause that starts",
    "  the transcript is heard at 60-105 ms (one silent window, a window 35 dB under the voice",
    "  counting as silent though Silero, being recurrent, still says speech), whisper 80-140 ms,",
    "  the LLM starts one window after the pause at the earliest ('speculate'), its first token",
    "  ~305 ms later, the first words 'Paris is' whole 67 ms after that (' the' shows 'is' is",
    "  whole; 'the' leans on the next word, so no piece ends on it), Piper ~100 ms for them;",
    "  the end of the 600 ms silence comes at 640-685 ms, within ~30 ms of the first words'",
    "  audio; then ~20 ms to the first speech packet and 40-80 ms at the client, of which 40-60",
    "  ms are the 'P' of 'Paris' under the loudness the figure counts (0.02 RMS). The same",
    "  hour, f44712b (with the new stand-in) and after: voice_to_answer 822 -> 781 ms (other",
    "  runs of the hour: 795 -> 744, 763, 785, 761; single runs 705-856), barge-in to silence",
    "  323 -> 243 ms, to the event 287 -> 209, CPU of a listening session 0.339 -> 0.309 cores",
    "  (0.369 in another run: noise; its mic sends silence, which costs no echo comparison).",
    "  With the old stand-in (trailing spaces), the pause one window sooner took voice_to_answer",
    "  810 -> 742 ms.",
    "  Barge-in needs 0.16 s of voice, counting the sound just before the VAD's first voiced",
    "  window (Silero needs ~100 ms to rate a fricative onset such as 'Stop' as speech) and checked",
    "  against the avatar's echo from that first window on: a voice 10 dB louder than the echo",
    "  has been at every delay counts at once, one 8 dB over it counts when its loudness contour",
    "  does not follow the avatar's, and a window that does follow it starts the count again.",
    "  Offline (the real listener fed espeak speech; the echo through a jitter buffer leaving",
    "  40-100 ms gaps, as in tests/test_voice_units), before (f44712b) and after: of echoes 5-50%",
    "  as loud as the avatar (no echo canceller), 46 of 75 interrupted the avatar, now 1; of",
    "  echoes 1-5% as loud (what a canceller leaves), 23 of 24 did, now none of 24 (nor of 75);",
    "  a voice over silence (headphones) 1.5-2.5 s into the avatar's speech interrupts 172 ms",
    "  after its first sound (median; 287 before), 0.5-1.5 s into it 256 ms (251 before; 3 of 24",
    "  missed, none before); over a canceller's residue 250 ms; over an echo nearly as loud as",
    "  itself it now waits for its contour to differ, or is missed (13 of 24). The guard compares",
    "  both streams in media time, so a busy machine's late packets do not look like a new voice.",
    "- Avatars and actions (bench/avatars.py): one idle WebRTC viewer of a portrait session; a frame",
    "  is told apart by the colour of its face (tinted copies of the astronaut, a blue clip). The",
    "  frames already rendered ahead of playback showed the old look first: 271 ms to the new",
    "  avatar and 235 ms to a clip's first frame (the same hour, idle machine; after: 112 and 89 ms",
    "  on the run before this one) before a change of look could drop the idle frames queued for",
    "  playback (as speech does); speaking frames are never dropped, so a switch",
    "  while speaking shows after the frames queued with their sound.",
    "- The per-frame looks (which renderer draws each frame: avatar, clip or idle clip) on the",
    "  feeder and inference threads were timed with bench/e2e.py --repeats 3 --max_sessions 3, twice",
    "  before (9ea738a) and twice after, the same hour: first audio 185 / 165 and 171 / 170 ms, CPU",
    "  per idle session 0.25 / 0.22 and 0.25 / 0.23 cores, per speaking session 0.43 / 0.36 and",
    "  0.39 / 0.36; 3 speaking sessions at 25 fps in every run.",
]


def verdict(value: float, target: float | None, better: str) -> str:
    if target is None:
        return ""
    ok = {"higher": value >= target, "lower": value <= target, "abs": abs(value) <= target}[better]
    return "met" if ok else "NOT met"


def render(results: dict[str, dict], fresh: list[str]) -> str:
    kept = [name for name in results if name not in fresh]
    lines = [
        "# Performance",
        "",
        (f"Measured {datetime.date.today().isoformat()} on {machine_name()}, no GPU, by" if fresh else
         "Measured on earlier days (each raw result says when and on what: `measured`), no GPU, by"),
        "`bench/run_all.py`; each figure is a median from one run. The benchmark client runs on the",
        "same machine as the server and decodes the video it receives, so it takes CPU the server",
        "would otherwise have.",
        *([f"This run measured {', '.join(fresh)}; the figures of {', '.join(kept)} are kept from earlier runs "
           "(their raw results say when and where: `measured`)."] if kept and fresh else []),
        "",
        "| figure | value | target | |",
        "| --- | --- | --- | --- |",
    ]
    for bench, key, label, target, better in TARGETS:
        if bench in results and key in results[bench]:
            value = results[bench][key]
            shown = "" if target is None else (f"<= {target}" if better == "lower" else
                                              f">= {target}" if better == "higher" else f"within +-{target}")
            lines.append(f"| {label} | {value} | {shown} | {verdict(value, target, better)} |")
    lines += wav2lip_table(results.get("wav2lip_speed"))
    lines += model_table(results.get("model_speed"))
    lines += ["", "## Reading these figures", "", *NOTES, "", "## Raw results", ""]
    for name, result in results.items():
        lines += [f"### {name}", "", "```json", json.dumps(result, indent=2), "```", ""]
    return "\n".join(lines)


def wav2lip_table(result: dict | None) -> list[str]:
    """Frames per second of the plain eager fp32 forward against the project's default path
    (BatchNorm folded, oneDNN, fp32) and, where measured, its opt-in bfloat16 variant."""
    if not result:
        return []
    rows = result.get("results", [])
    has_bf16 = any("project_bf16" in row for row in rows)
    lines = [
        "",
        f"## Wav2Lip 256 on {result.get('device', 'cpu')} ({result.get('threads')} threads), random weights",
        "",
        "| batch | plain eager fp32 fps | project fp32 fps | speed-up | project conv GFLOP/s | max abs diff |"
        + (" bf16 fps | bf16 speed-up | bf16 max abs diff |" if has_bf16 else ""),
        "| --- | --- | --- | --- | --- | --- |" + (" --- | --- | --- |" if has_bf16 else ""),
    ]
    for row in rows:
        if "project" not in row:
            continue
        line = (
            f"| {row['batch']} | {row['plain']['fps']} | {row['project']['fps']} | {row['speedup_project']}x"
            f" | {row['project'].get('conv_gflops', '')} | {row['project']['max_abs_diff_vs_plain']:.1e} |"
        )
        if has_bf16 and "project_bf16" in row:
            bf16 = row["project_bf16"]
            line += f" {bf16['fps']} | {row['speedup_project_bf16']}x | {bf16['max_abs_diff_vs_plain']:.3f} |"
        lines.append(line)
    return lines


def model_table(result: dict | None) -> list[str]:
    """MuseTalk and Ultralight at their real sizes: features and rendering per batch."""
    if not result:
        return []
    lines = []
    for model in result.get("results", []):
        lines += [
            "",
            f"## {model['model']} at its real size on {model['device']} ({model['threads']} threads), random weights",
            "",
            f"Measured {result.get('measured', '')}. Peak memory {model['peak_rss_mb']} MB. One frame at batch 1 (ms): "
            + ", ".join(f"{k} {v}" for k, v in model.get("profile_batch1_ms", {}).items()) + ".",
            "",
            "| batch | features per batch (ms) | inference + paste-back (ms) | fps |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {b['batch']} | {b['feature_ms']} | {b['render_ms']} | {b['fps']} |" for b in model["batches"]]
        fast = model.get("fast_whisper")
        if fast:
            lines += ["", f"Whisper features of one 16-frame window: {fast['full_ms']} ms on 30 s (the default), "
                      f"{fast['fast_ms']} ms with `--fast_whisper` ({fast['speedup']}x), which moves them by "
                      f"{100 * fast['relative_deviation']:.0f}% of their mean magnitude (random weights)."]
    return lines


def previous_results() -> dict[str, dict]:
    """The raw results of the last run, from docs/PERFORMANCE.md, to keep those not re-run."""
    path = ROOT / "docs" / "PERFORMANCE.md"
    if not path.is_file():
        return {}
    text = path.read_text()
    # Results written before they carried their own date and machine take the header's.
    first = next((line for line in text.splitlines() if line.startswith("Measured ")), "Measured ? on ?,")
    header = first.removeprefix("Measured ").split(", no GPU")[0].rstrip(",")
    found = {}
    for name in BENCHES:
        marker = f"### {name}\n\n```json\n"
        if marker in text:
            start = text.index(marker) + len(marker)
            try:
                found[name] = json.loads(text[start : text.index("```", start)])
            except ValueError:
                continue
            found[name].setdefault("measured", header)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(BENCHES), default=list(BENCHES))
    args = parser.parse_args()
    # Benches not run this time keep their last figures (run them all to refresh everything).
    results = {k: v for k, v in previous_results().items() if k not in args.only}
    for name in args.only:
        result = run(name)
        if result is not None:
            results[name] = result
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "PERFORMANCE.md").write_text(render(results, args.only))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
