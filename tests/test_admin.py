"""The operator's routes: who may call them (the admin token, else loopback only), the sessions
listed and ended, the settings with every secret redacted, /metrics in Prometheus' text format,
and the admin page in a real Chromium (real servers on loopback)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import shutil
import time

import aiohttp
import pytest
from avatar_folders import FRAME, PORTRAIT
from chromium import create_on_avatar_page, headless_page

from conftest import LLM_ENV, RunningServer

ADMIN = "s3cret-admin"
API = "s3cret-api"
PUSH = "s3cret-push"
LLM_PASSWORD = "pw-s3cret"
TURN_PASSWORD = "turn-s3cret"
ENV_KEY = "sk-env-s3cret-key"
SECRETS = (ADMIN, API, PUSH, LLM_PASSWORD, TURN_PASSWORD, ENV_KEY)
ICE = json.dumps([{"urls": ["turn:127.0.0.1:3478"], "username": "turnuser", "credential": TURN_PASSWORD}])
UNKNOWN_ID = 1234567890123456
GOOD_ORIGIN = "http://console.example:8080"
ADMIN_ROUTES = [
    ("GET", "/api/admin/sessions"),
    ("GET", "/api/admin/config"),
    ("GET", "/metrics"),
    ("DELETE", f"/api/admin/sessions/{UNKNOWN_ID}"),
]


def run(coro):
    return asyncio.run(coro)


def poll(predicate, timeout: float, step: float = 0.25) -> bool:
    """Ask `predicate` (which makes its own requests) until it holds or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@pytest.fixture(scope="module")
def guarded() -> RunningServer:
    """Every token set, an LLM URL with a password in it, a TURN server with a credential, and
    an API key in the environment."""
    with pytest.MonkeyPatch.context() as env:
        for name in LLM_ENV:
            env.delenv(name, raising=False)
        env.setenv("OPENAI_API_KEY", ENV_KEY)
        srv = RunningServer([
            "--max_session", "4", "--asr", "off", "--admin_token", ADMIN, "--api_token", API,
            "--push_token", PUSH, "--llm_url", f"http://user:{LLM_PASSWORD}@127.0.0.1:9/v1",
            "--llm_model", "test", "--ice_servers", ICE, "--cors_origins", GOOD_ORIGIN,
        ])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def local() -> RunningServer:
    """No admin token: the admin routes answer to loopback only. 127.0.0.1 is a trusted proxy,
    so a test can pose as a client elsewhere with X-Forwarded-For."""
    saved = pytest.MonkeyPatch()
    for name in LLM_ENV:
        saved.delenv(name, raising=False)
    saved.delenv("LIVETALKING_ADMIN_TOKEN", raising=False)
    try:
        srv = RunningServer(["--max_session", "4", "--asr", "off", "--forwarded_allow_ips", "127.0.0.1"])
    finally:
        saved.undo()
    yield srv
    srv.stop()


async def call(url: str, method: str = "GET", **kwargs) -> tuple[int, dict | str, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body, dict(resp.headers)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def admin_get(srv: RunningServer, path: str, headers: dict | None = None) -> dict | str:
    status, body, _ = run(call(srv.url + path, headers=headers or {}))
    assert status == 200, body
    return body["data"] if isinstance(body, dict) else body


def open_session(srv: RunningServer, headers: dict | None = None, **body) -> int:
    status, reply, _ = run(call(srv.url + "/session", "POST", json=body, headers=headers or {}))
    assert status == 200, reply
    return reply["sessionid"]


# --- who may call -------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_need_the_admin_token_not_the_api_one(guarded, method, path, caplog):
    url = guarded.url + path
    refusals = ({}, bearer("wrong"), bearer(API), {"Authorization": ADMIN}, {"Authorization": f"Basic {ADMIN}"})
    with caplog.at_level(logging.DEBUG):
        for headers in refusals:
            status, body, _ = run(call(url, method, headers=headers))
            assert status == 401, (headers, body)
            assert body["code"] == -1 and "admin token" in body["msg"] and "--admin_token" in body["msg"]
        status, body, _ = run(call(url, method, headers=bearer(ADMIN)))
        expected = 404 if method == "DELETE" else 200  # the route's own answer: no such session
        assert status == expected, body
        # `?token=` as /sse takes it, for GETs only (a link that ends a session is not made here).
        status, _, _ = run(call(url + f"?token={ADMIN}", method))
        assert status == (200 if method == "GET" else 401)
    assert ADMIN not in caplog.text and "wrong" not in caplog.text


def test_an_allowed_origin_calls_the_admin_routes_with_the_admin_token(guarded):
    url = f"{guarded.url}/api/admin/sessions/{UNKNOWN_ID}"
    status, _, headers = run(call(url, "OPTIONS", headers={
        "Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "authorization"}))
    assert status == 204 and headers["Access-Control-Allow-Origin"] == GOOD_ORIGIN
    assert "DELETE" in headers["Access-Control-Allow-Methods"]
    status, body, headers = run(call(url, "DELETE", headers={"Origin": GOOD_ORIGIN}))
    assert status == 401, body  # the preflight lets it ask; the token is still needed
    status, body, headers = run(call(url, "DELETE", headers={"Origin": GOOD_ORIGIN, **bearer(ADMIN)}))
    assert status == 404 and headers["Access-Control-Allow-Origin"] == GOOD_ORIGIN
    status, body, _ = run(call(url, "DELETE", headers={"Origin": "http://evil.example", **bearer(ADMIN)}))
    assert status == 403 and "cross-origin" in body["msg"]


def test_the_admin_token_may_come_from_the_environment(monkeypatch):
    from access import ADMIN_TOKEN_ENV, admin_token

    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert admin_token(None) == "from-env" and admin_token("from-flag") == "from-flag"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "")
    assert admin_token(None) is None


def test_the_api_token_guards_routes_with_parameters_too(guarded):
    """They are registered by pattern (/session/{sessionid}); the guard used to compare the
    path asked for, so these went through without the token."""
    sessionid = open_session(guarded, bearer(API))
    for method, path in (("DELETE", f"/session/{sessionid}"), ("GET", f"/record/{sessionid}"),
                         ("DELETE", "/whep/abc"), ("PATCH", "/whep/abc")):
        status, body, _ = run(call(guarded.url + path, method))
        assert status == 401, (path, body)
        assert "API token" in body["msg"]
    assert sessionid in guarded.live.sessions  # the refused DELETE ended nothing
    status, body, _ = run(call(f"{guarded.url}/session/{sessionid}", "DELETE", headers=bearer(API)))
    assert status == 200, body
    assert sessionid not in guarded.live.sessions


def test_without_an_admin_token_only_this_machine_is_answered(local):
    for method, path in ADMIN_ROUTES:
        status, body, _ = run(call(local.url + path, method))
        assert status == (404 if method == "DELETE" else 200), (path, body)
        refusals = (
            {"X-Forwarded-For": "203.0.113.7"},  # a client elsewhere, named by the trusted proxy
            {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"},
            {"Forwarded": "for=203.0.113.7;proto=https"},  # a proxy on this machine, not a trusted one
            {"Host": f"rebound.example:{local.port}"},  # a page elsewhere whose DNS name points here
        )
        for headers in refusals:
            status, body, _ = run(call(local.url + path, method, headers=headers))
            assert status == 403, (path, headers, body)
            assert body["code"] == -1 and "--admin_token" in body["msg"] and "loopback" in body["msg"]
    # A page of another origin in the operator's browser cannot drive it either.
    status, body, _ = run(call(local.url + "/api/admin/sessions", headers={"Origin": "http://evil.example"}))
    assert status == 403 and "cross-origin" in body["msg"]
    status, _, headers = run(call(f"{local.url}/api/admin/sessions/{UNKNOWN_ID}", "OPTIONS", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"}))
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    # The pages stay open to everyone: only the routes are the operator's.
    status, page, _ = run(call(local.url + "/admin.html", headers={"X-Forwarded-For": "203.0.113.7"}))
    assert status == 200 and "/api/admin/sessions" in page and "/metrics" in page


# --- sessions --------------------------------------------------------------------------------------
def listed(srv: RunningServer, sessionid: int) -> dict | None:
    return next((s for s in admin_get(srv, "/api/admin/sessions") if s["sessionid"] == sessionid), None)


def test_the_admin_lists_sessions_and_ends_one(local):
    sessionid = open_session(local)
    entry = listed(local, sessionid)
    assert entry is not None
    assert entry["model"] == "portrait" and entry["avatar"] == local.opt.avatar_id
    assert entry["speaking"] is False and entry["recording"] is False and entry["outputs"] == []
    assert entry["background"] is True and entry["browser"] is False and entry["listening"] is False
    assert entry["last_reply_latency_ms"] is None and entry["age_s"] >= 0 and entry["slots_missed"] >= 0
    # A few seconds on, the frames it renders show as a rate.
    assert poll(lambda: (listed(local, sessionid) or {}).get("fresh_fps"), 20)
    assert listed(local, sessionid)["fresh_fps"] > 0

    sessions_before = len(admin_get(local, "/stats")["sessions"])
    status, body, _ = run(call(f"{local.url}/api/admin/sessions/{sessionid}", "DELETE"))
    assert status == 200 and body["code"] == 0, body
    assert listed(local, sessionid) is None
    assert len(admin_get(local, "/stats")["sessions"]) == sessions_before - 1
    status, body, _ = run(call(local.url + "/human", "POST", json={"sessionid": sessionid, "text": "Hello?"}))
    assert status == 404, body
    status, body, _ = run(call(f"{local.url}/api/admin/sessions/{sessionid}", "DELETE"))
    assert status == 404 and body["code"] == -1
    for bad in ("abc", "12.5", "1" * 40, "%C2%B2"):
        status, body, _ = run(call(f"{local.url}/api/admin/sessions/{bad}", "DELETE"))
        assert status == 400 and "sessionid" in body["msg"], (bad, body)


def test_a_recording_session_shows_as_recording(local):
    sessionid = open_session(local, outputs=["record"])
    try:
        entry = listed(local, sessionid)
        assert entry["outputs"][0]["kind"] == "record"
        assert poll(lambda: (listed(local, sessionid) or {}).get("recording"), 20)
        assert listed(local, sessionid)["recording"] is True
    finally:
        run(call(f"{local.url}/api/admin/sessions/{sessionid}", "DELETE"))


# --- config -----------------------------------------------------------------------------------------
def test_the_settings_are_shown_with_every_secret_redacted(guarded):
    status, raw, headers = run(call(guarded.url + "/api/admin/config", headers=bearer(ADMIN)))
    assert status == 200
    text = json.dumps(raw)
    for secret in SECRETS:
        assert secret not in text, secret
    config = raw["data"]
    for name in ("admin_token", "api_token", "push_token"):
        assert config[name] == "***"
    assert config["llm_url"] == "http://user:***@127.0.0.1:9/v1"
    assert config["ice"] == [{"urls": ["turn:127.0.0.1:3478"], "username": "turnuser", "credential": "***"}]
    assert config["ice_servers"] == config["ice"]
    assert config["model"] == "portrait" and config["max_session"] == 4  # the rest as it runs
    assert not any(name.isupper() and name.endswith("_KEY") for name in config)  # no environment


def test_redaction_finds_credentials_in_urls_and_nested_settings():
    from admin import redact_url, redacted_config

    assert redact_url("rtmp://live.example/app/streamkey123") == "rtmp://live.example/app/***"
    assert redact_url("https://u:p@h.example/x?a=1&X-Amz-Signature=abc&access_token=t#k=v") == \
        "https://u:***@h.example/x?a=1&X-Amz-Signature=***&access_token=***#k=v"
    assert redact_url("https://ghp_abcdef@github.example/r") == "https://***@github.example/r"
    assert redact_url("http://[::1/") == "***"  # not a URL it can read: hidden whole
    shown = redacted_config(
        {"outputs": [{"type": "whip", "url": "https://w.example/whip?token=tok-123", "Bearer": "b-4567"}],
         "notes": "the key is hunter22 and tok-123", "db_password": "hunter22", "empty_token": None,
         "when": float("nan"), "thing": object(), "_private": "x"},
        env={"MY_API_KEY": "env-7890", "PWD": "/work"},
    )
    assert shown["outputs"] == [{"type": "whip", "url": "https://w.example/whip?token=***", "Bearer": "b-4567"}]
    assert shown["notes"] == "the key is *** and ***"  # a secret's value found in other text
    assert shown["db_password"] == "***" and shown["empty_token"] is None and shown["when"] is None
    assert "thing" not in shown and "_private" not in shown
    shown = redacted_config({"prompt": "say env-7890 and /work"}, env={"MY_API_KEY": "env-7890", "PWD": "/work"})
    assert shown["prompt"] == "say *** and /work"


# --- metrics -----------------------------------------------------------------------------------------
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})? (\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, dict]:
    """A strict reading of the text format 0.0.4 (prometheus_client is not a dependency here):
    HELP then TYPE then the family's samples, together; counters named *_total; histograms'
    buckets cumulative up to +Inf, which equals _count."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in families, f"family {name} twice"
            current = families[name] = {"help": line.split(" ", 3)[3], "type": None, "samples": []}
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert current is families.get(name) and current["type"] is None, line
            assert kind in ("counter", "gauge", "histogram"), line
            current["type"] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match and current is not None and current["type"], f"not a sample of a typed family: {line!r}"
            name, labels, value = match.groups()
            family = next(n for n, f in families.items() if f is current)
            suffixes = ("_bucket", "_sum", "_count") if current["type"] == "histogram" else ("",)
            assert name in [family + s for s in suffixes], f"{name} in family {family}"
            current["samples"].append((name, dict(LABEL.findall(labels or "")), float(value)))
    for name, family in families.items():
        assert family["samples"], name
        if family["type"] == "counter":
            assert name.endswith("_total") and all(v >= 0 for _, _, v in family["samples"]), name
        if family["type"] == "histogram":
            buckets = [(s[1]["le"], s[2]) for s in family["samples"] if s[0].endswith("_bucket")]
            counts = [c for _, c in buckets]
            assert buckets[-1][0] == "+Inf" and counts == sorted(counts), buckets
            assert [float(le) for le, _ in buckets] == sorted(float(le) for le, _ in buckets)
            count = next(v for n, _, v in family["samples"] if n == name + "_count")
            assert counts[-1] == count and any(n == name + "_sum" for n, _, _ in family["samples"])
    return families


def value(families: dict, name: str, **labels: str) -> float:
    samples = [s for family in families.values() for s in family["samples"] if s[0] == name]
    assert samples, f"no {name} in /metrics"
    return sum(v for _, lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))


def scrape(srv: RunningServer, headers: dict | None = None) -> dict:
    status, text, resp_headers = run(call(srv.url + "/metrics", headers=headers or {}))
    assert status == 200
    assert resp_headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(text)


def test_metrics_count_what_the_sessions_do_and_never_go_down(local):
    before = scrape(local)
    sessionid = open_session(local)
    status, body, _ = run(call(local.url + "/human", "POST", json={"sessionid": sessionid, "text": "Hello there."}))
    assert status == 200, body
    def spoken() -> bool:
        now = scrape(local)
        return (value(now, "livetalking_frames_sent_total") > value(before, "livetalking_frames_sent_total")
                and value(now, "livetalking_reply_latency_seconds_count")
                > value(before, "livetalking_reply_latency_seconds_count"))

    assert poll(spoken, 30)
    during = scrape(local)
    assert value(during, "livetalking_sessions", kind="background") >= 1
    assert value(during, "livetalking_reply_latency_seconds_sum") > 0
    assert listed(local, sessionid)["last_reply_latency_ms"] > 0
    # A voice the engine cannot load: the sentence fails, and the error is counted.
    status, body, _ = run(call(local.url + "/human", "POST", json={
        "sessionid": sessionid, "text": "This voice is broken.", "tts": {"ref_file": "broken.onnx"}}))
    assert status == 200, body
    tts_errors = value(during, "livetalking_errors_total", source="tts")
    assert poll(lambda: value(scrape(local), "livetalking_errors_total", source="tts") > tts_errors, 30)

    last = scrape(local)
    run(call(f"{local.url}/api/admin/sessions/{sessionid}", "DELETE"))
    after = scrape(local)
    for name in ("livetalking_frames_sent_total", "livetalking_frames_fresh_total", "livetalking_slots_missed_total",
                 "livetalking_reply_latency_seconds_count"):
        assert value(after, name) >= value(last, name), name  # what a closed session did stays counted
    assert value(after, "livetalking_sessions") == value(last, "livetalking_sessions") - 1


def test_counters_take_errors_by_source_and_keep_closed_sessions_totals():
    from types import SimpleNamespace

    from admin import ServiceCounters
    from events import SessionEvents

    async def scenario():
        counters = ServiceCounters()
        hub = SessionEvents(7, asyncio.get_running_loop())
        player = SimpleNamespace(frames_sent=10, frames_fresh=8, slots_missed=1)
        session = SimpleNamespace(sessionid=7, player=player, on_reply_latency=None)
        counters.opened(session, hub, 0.0)
        session.on_reply_latency(0.25)
        session.on_reply_latency(30.0)
        for event in ({"status": "error", "source": "llm", "msg": "x"}, {"status": "error", "text": "a", "msg": "y"},
                      {"status": "error", "source": "asr", "msg": "z"}, {"status": "start"}):
            hub.publish(event)
        player.frames_sent = 50
        assert counters.total("frames_sent") == 50
        hub.close("gone")
        player.frames_sent = 0  # the session object is gone; what it sent is not
        return counters

    counters = run(scenario())
    assert counters.errors == {"tts": 1, "llm": 1, "asr": 1}
    assert counters.total("frames_sent") == 50 and counters.total("frames_fresh") == 8
    assert counters.tracked == {}
    assert counters.latency.count == 2 and counters.latency.cumulative()[:3] == [(0.1, 0), (0.2, 0), (0.3, 1)]
    assert counters.latency.cumulative()[-1] == (math.inf, 2)


def test_the_exposition_escapes_labels_and_refuses_bad_names():
    from metrics import Exposition, Histogram

    out = Exposition()
    out.gauge("a_gauge", "line one\nline two \\", [({"who": 'say "hi"\\\n'}, 1.5)])
    out.counter("b_total", "a counter", 3)
    out.histogram("c_seconds", "a histogram", Histogram([0.5, 1]))
    families = parse_exposition(out.text())
    assert families["a_gauge"]["help"] == "line one\\nline two \\\\"
    assert 'a_gauge{who="say \\"hi\\"\\\\\\n"} 1.5' in out.text()
    with pytest.raises(ValueError):
        out.counter("b", "not ending in _total", 1)
    with pytest.raises(ValueError):
        out.gauge("a_gauge", "twice", 1)
    with pytest.raises(ValueError):
        out.gauge("bad-name", "x", 1)


# --- the page ---------------------------------------------------------------------------------------
def test_the_admin_page_asks_for_the_token_once_and_ends_a_session(guarded):
    sessionid = open_session(guarded, bearer(API))
    asked: list[str] = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept(ADMIN)

    with headless_page(answer) as page:
        page.goto(guarded.url + "/admin.html")
        row = page.locator(f'#sessions tr[data-sessionid="{sessionid}"]')
        row.wait_for(timeout=15000)
        assert "background" in row.inner_text() and guarded.opt.avatar_id in row.inner_text()
        page.wait_for_function("document.querySelector('#config').textContent.includes('admin_token')",
                               timeout=10000)
        config = page.locator("#config").inner_text()
        assert not any(secret in config for secret in SECRETS)
        assert page.locator('#metrics [data-metric="sessions open"] b').inner_text() != ""
        row.locator("button.end").click()
        row.wait_for(state="detached", timeout=15000)
        assert sessionid not in guarded.live.sessions
        # It goes on refreshing with the token it was given, without asking again.
        page.wait_for_function("document.querySelector('#updated').textContent !== 'never'", timeout=10000)
        assert page.evaluate("sessionStorage.getItem('livetalking-admin-token')") == ADMIN
        assert page.locator("#status").inner_text() == ""
    assert asked == ["This server needs its admin token:"]


def test_the_avatar_page_asks_for_the_admin_token_once_and_shows_the_new_avatar(tmp_path):
    shutil.copytree(PORTRAIT, tmp_path / PORTRAIT.name)
    srv = RunningServer(["--admin_token", ADMIN, "--avatar_root", str(tmp_path), "--asr", "off",
                         "--avatar_upload_dir", str(tmp_path)])
    asked: list[str] = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept(ADMIN)

    try:
        with headless_page(answer) as page:
            width = create_on_avatar_page(page, srv.url, str(PORTRAIT / FRAME), "with_token")
    finally:
        srv.stop()
    assert width == 128 and (tmp_path / "with_token" / "full_imgs").is_dir()
    assert len(asked) == 1 and "admin token" in asked[0]


def test_without_an_admin_token_no_other_origin_may_call_even_with_cors_origins_star():
    # Every page open in a browser on the server's machine calls from loopback: without an admin
    # token, a page from elsewhere must not read the settings or end sessions.
    srv = RunningServer(["--asr", "off", "--cors_origins", "*"])
    try:
        status, body, headers = run(call(srv.url + "/api/admin/config", headers={
            "Origin": "https://evil.example", "Host": f"localhost:{srv.port}"}))
        assert status == 403 and "Access-Control-Allow-Origin" not in headers, body
        status, body, _ = run(call(srv.url + "/api/admin/config", headers={"Host": f"localhost:{srv.port}"}))
        assert status == 200, body  # the machine's own call still answers
        # The API itself still follows --cors_origins.
        status, _, headers = run(call(srv.url + "/stats", headers={"Origin": "https://evil.example"}))
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://evil.example"
    finally:
        srv.stop()
