"""--config config.yaml and .env: settings from files, with the command line over the file over
the defaults; wrong files refused with the key, line and file named; .env secrets never logged."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import aiohttp
import pytest

import app
import config
from appprocess import AppProcess

SECRET_TOKEN = "tok-9f3a7c1e-never-logged"
SECRET_KEY = "sk-5d2b8e4a-never-logged"


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty folder: the default .env lookup must not find the developer's own."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """parse_args(argv) must exit with status 2; its message (stderr)."""
    with pytest.raises(SystemExit) as exited:
        app.parse_args(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


# --- YAML applied ---------------------------------------------------------------------------------


def test_yaml_values_replace_the_defaults(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cfg.yaml", """\
listenport: 9123
max-session: 3        # - or _ in a key
ref_file: cmn         # any case, when only one flag has that name
server:               # a section: a key that is no flag
  host: 127.0.0.1
  barge_in: off       # the text as typed: "off", not YAML 1.1's false
avatar_id: 007        # a text flag keeps the zeros
max_upload_mb: 12
upload_timeout: "7.5" # a string for a number flag is converted as the command line would
""")
    opt = app.parse_args(["--config", cfg])
    assert opt.listenport == 9123
    assert opt.max_session == 3
    assert opt.REF_FILE == "cmn"
    assert opt.host == "127.0.0.1"
    assert opt.barge_in == "off"
    assert opt.avatar_id == "007"
    assert opt.max_upload_mb == 12.0 and opt.upload_timeout == 7.5
    assert opt.llm_history == 10  # not in the file: the parser's default


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cfg.yaml", "listenport: 9123\nmax_session: 3\nREF_FILE: cmn\n")
    opt = app.parse_args(["--config", cfg, "--listenport", "9200", "--REF_FILE", "en"])
    assert opt.listenport == 9200 and opt.REF_FILE == "en"
    assert opt.max_session == 3


def test_a_yaml_model_brings_its_own_flags(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cfg.yaml", "model: wav2lip\nmodel_path: /models/wav2lip.pth\ncpu_bf16: true\n")
    opt = app.parse_args(["--config", cfg])
    assert opt.model == "wav2lip"
    assert opt.model_path == "/models/wav2lip.pth"
    assert opt.cpu_bf16 is True


def test_a_switch_takes_false_too(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cfg.yaml", "model: wav2lip\ncpu_bf16: false\n")
    assert app.parse_args(["--config", cfg]).cpu_bf16 is False


def test_the_command_lines_model_wins(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write(tmp_path, "cfg.yaml", "model: wav2lip\nmodel_path: /models/wav2lip.pth\n")
    err = refused(capsys, ["--config", cfg, "--model", "portrait"])
    assert "line 2: unknown key model_path" in err
    assert "--model portrait" in err


def test_null_leaves_an_optional_flag_unset(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cfg.yaml", "push_url:\nllm_url: ~\n")
    opt = app.parse_args(["--config", cfg])
    assert opt.push_url is None and opt.llm_url is None


def test_an_empty_file_sets_nothing(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cfg.yaml", "# all commented out\n")
    assert app.parse_args(["--config", cfg]).listenport == 8010


def test_notes_name_the_keys_set_never_the_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = write(tmp_path, "cfg.yaml", f"api_token: {SECRET_TOKEN}\nlistenport: 9123\n")
    opt = app.parse_args(["--config", cfg])
    assert opt.api_token == SECRET_TOKEN
    with caplog.at_level(logging.INFO, logger="livetalking.config"):
        config.log_notes(opt)
    assert "api_token, listenport" in caplog.text
    assert SECRET_TOKEN not in caplog.text


# --- wrong files refused --------------------------------------------------------------------------


def test_unknown_keys_are_named_with_the_close_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write(tmp_path, "cfg.yaml", "listenport: 9000\nlistenprot: 9123\nserver:\n  max_sesion: 2\nzzz: 1\n")
    err = refused(capsys, ["--config", cfg])
    assert f"config file {cfg}" in err
    assert "line 2: unknown key listenprot (did you mean listenport?)" in err
    assert "line 4: unknown key server.max_sesion (did you mean max_session?)" in err
    assert "line 5: unknown key zzz" in err


@pytest.mark.parametrize(("text", "message"), [
    ("listenport: abc\n", "line 1: listenport: 'abc' is not a valid int"),
    ("listenport: 80.5\n", "line 1: listenport: '80.5' is not a valid int"),
    ("max_upload_mb: [1, 2]\n", "line 1: max_upload_mb takes one value, not a list"),
    ("transport: ftp\n", "line 1: transport: 'ftp' is not one of: webrtc"),
    ("listenport: 8010\nllm: cloud\n", "line 2: llm: 'cloud' is not one of: openai, local"),
    ("model: wav2lip\ncpu_bf16: 1\n", "line 2: cpu_bf16 takes true or false, not '1'"),
    ("listenport:\n", "line 1: listenport needs a value"),
    ("config: other.yaml\n", "line 1: config: a config file cannot name another"),
    ("listenport: 9000\nlistenport: 9001\n", "line 2: listenport sets listenport again (line 1: listenport)"),
    ("tts: !!python/object/apply:os.system [echo hi]\n", "tts takes one value, not a list"),
    ("tts: !!python/name:os.system\n", "the YAML tag tag:yaml.org,2002:python/name:os.system is not allowed"),
    ("12: x\n", "line 1: a key must be a flag's name, not '12'"),
])
def test_wrong_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str) -> None:
    cfg = write(tmp_path, "cfg.yaml", text)
    assert message in refused(capsys, ["--config", cfg])


@pytest.mark.parametrize(("text", "message"), [
    ("- listenport\n- 9123\n", "must be a mapping of settings (key: value), not a list"),
    ("just words\n", "must be a mapping of settings (key: value), not a single value"),
    ("listenport: [9123\n", "is not valid YAML"),
    ("a: 1\n---\nb: 2\n", "is not valid YAML"),
])
def test_a_file_that_is_no_settings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    cfg = write(tmp_path, "cfg.yaml", text)
    err = refused(capsys, ["--config", cfg])
    assert f"config file {cfg} {message}" in err


def test_a_yaml_error_names_the_line_but_never_quotes_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write(tmp_path, "cfg.yaml", "listenport: 9123\nadmin_token: s3cr3t-value: x\n")
    err = refused(capsys, ["--config", cfg])
    assert "is not valid YAML" in err and "line 2" in err
    assert "s3cr3t-value" not in err


def test_a_missing_or_huge_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = str(tmp_path / "nowhere.yaml")
    assert f"config file {missing} not found" in refused(capsys, ["--config", missing])
    huge = write(tmp_path, "huge.yaml", "# padding\n" * (config.CONFIG_LIMIT // 10 + 1))
    assert f"config file {huge} is larger than 1024 KiB" in refused(capsys, ["--config", huge])
    assert f"config file {tmp_path} is not a file" in refused(capsys, ["--config", str(tmp_path)])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00listenport")
    assert f"config file {binary} is not UTF-8 text" in refused(capsys, ["--config", str(binary)])


# --- .env -----------------------------------------------------------------------------------------


def test_env_file_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "x.env", f"""\
# a comment, then a blank line

OPENAI_API_KEY={SECRET_KEY}
export OPENAI_BASE_URL = "http://127.0.0.1:9/v1"   # a comment after quotes
TENCENT_SECRET_ID='single # not a comment'
DOUBAO_TOKEN=abc#1 # only a # after a space starts a comment
AZURE_SPEECH_KEY="a\\"quoted\\" value"
LIVETALKING_API_TOKEN=
""")
    assert config.read_env_file(Path(path)) == {
        "OPENAI_API_KEY": SECRET_KEY,
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "TENCENT_SECRET_ID": "single # not a comment",
        "DOUBAO_TOKEN": "abc#1",
        "AZURE_SPEECH_KEY": 'a"quoted" value',
        "LIVETALKING_API_TOKEN": "",
    }


def test_env_keys_loaded_the_real_environment_wins_others_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", f"OPENAI_API_KEY={SECRET_KEY}\nDASHSCOPE_API_KEY=from-file\n"
                                   "PATH=/evil\nLD_PRELOAD=/evil.so\n")
    environ = {"DASHSCOPE_API_KEY": "from-environment", "PATH": "/usr/bin"}
    notes = config.load_env(path, explicit=True, environ=environ)
    assert environ == {"OPENAI_API_KEY": SECRET_KEY, "DASHSCOPE_API_KEY": "from-environment", "PATH": "/usr/bin"}
    text = "\n".join(message for _, message in notes)
    assert f"loaded 1 key from {path}: OPENAI_API_KEY" in text
    assert "ignored LD_PRELOAD, PATH" in text
    assert "kept the environment's DASHSCOPE_API_KEY" in text
    assert SECRET_KEY not in text and "/evil" not in text and "from-file" not in text
    assert (logging.WARNING, next(m for m in text.splitlines() if "ignored" in m)) in notes


def test_the_default_env_is_read_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "placeholder")
    monkeypatch.delenv("OPENAI_BASE_URL")  # absent now, and restored by monkeypatch afterwards
    (tmp_path / ".env").write_text("OPENAI_BASE_URL=http://127.0.0.1:9/v1\n")
    opt = app.parse_args([])
    assert os.environ["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1"
    assert any("OPENAI_BASE_URL" in message for _, message in opt.config_notes)


def test_no_default_env_is_fine_an_explicit_missing_one_is_not(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert app.parse_args([]).config_notes == []
    missing = str(tmp_path / "nowhere.env")
    assert f"env file {missing} not found" in refused(capsys, ["--env_file", missing])


@pytest.mark.parametrize(("text", "message"), [
    (f"OPENAI_API_KEY {SECRET_KEY}\n", "line 1 is not KEY=value"),
    (f"# x\n{SECRET_KEY}\n", "line 2 is not KEY=value"),
    (f'OPENAI_API_KEY="{SECRET_KEY}\n', "line 1 (OPENAI_API_KEY): the quote is not closed"),
    (f'OPENAI_API_KEY="{SECRET_KEY}" trailing\n', "line 1 (OPENAI_API_KEY): text after the closing quote"),
])
def test_a_bad_env_line_is_named_but_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    path = write(tmp_path, "bad.env", text)
    err = refused(capsys, ["--env_file", path])
    assert f"env file {path}: {message}" in err
    assert SECRET_KEY not in err


def test_a_huge_env_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, "big.env", "# padding\n" * (config.ENV_LIMIT // 10 + 1))
    assert f"env file {path} is larger than 64 KiB" in refused(capsys, ["--env_file", path])


def test_the_env_file_may_come_from_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_SPEECH_REGION", "placeholder")
    monkeypatch.delenv("AZURE_SPEECH_REGION")
    env = write(tmp_path, "keys.env", "AZURE_SPEECH_REGION=westeurope\n")
    cfg = write(tmp_path, "cfg.yaml", f"env_file: {env}\n")
    app.parse_args(["--config", cfg])
    assert os.environ["AZURE_SPEECH_REGION"] == "westeurope"


# --- real server processes ------------------------------------------------------------------------


def test_a_server_started_with_a_config_file_uses_it(tmp_path: Path) -> None:
    # listenport here is overridden by the --listenport AppProcess gives; the rest is the file's.
    cfg = write(tmp_path, "cfg.yaml", "listenport: 1\nsessions:\n  max_session: 1\ncapacity: 2\nasr: off\n")
    srv = AppProcess(["--config", cfg])

    async def scenario() -> tuple[int, int, str]:
        async with aiohttp.ClientSession() as http:
            await srv.wait_ready(http)
            async with http.post(srv.url + "/session", json={}) as first:
                opened = first.status
            async with http.post(srv.url + "/session", json={}) as second:
                return opened, second.status, await second.text()

    try:
        opened, status, body = asyncio.run(scenario())
    finally:
        log = srv.log()
        srv.stop()
    assert opened == 200, log[-2000:]
    assert status == 503 and "all 1 sessions are in use" in body, body


def test_a_server_takes_its_token_from_env_and_never_logs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIVETALKING_API_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)  # the machine's own must not decide the test
    env = write(tmp_path, ".env", f'# keys\nexport LIVETALKING_API_TOKEN="{SECRET_TOKEN}"\n'
                                  f"OPENAI_API_KEY={SECRET_KEY}\nUNRELATED_SETTING=1\n")
    srv = AppProcess(["--env_file", env, "--capacity", "2", "--asr", "off"])

    async def scenario() -> tuple[int, int]:
        async with aiohttp.ClientSession() as http:
            await srv.wait_ready(http)
            async with http.get(srv.url + "/stats") as anonymous:
                without = anonymous.status
            async with http.get(srv.url + "/stats", headers={"Authorization": f"Bearer {SECRET_TOKEN}"}) as resp:
                return without, resp.status

    try:
        without, with_token = asyncio.run(scenario())
    finally:
        log = srv.log()
        srv.stop()
    assert (without, with_token) == (401, 200), log[-2000:]
    assert SECRET_TOKEN not in log and SECRET_KEY not in log
    assert "LIVETALKING_API_TOKEN" in log and "ignored UNRELATED_SETTING" in log
