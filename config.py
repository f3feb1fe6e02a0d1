"""--config config.yaml and .env: settings kept in files.

A YAML config file holds upstream LiveTalking V2's keys, which are the flags' names
(`listenport: 8010`, `max-session: 3`, `ref_file: cmn`), at the top level or one level down in
sections (`server: {listenport: 8010}`); each value is read as the text typed after the flag
would be, converted and checked as argparse checks that text. A flag given on the command line
wins over the file, the file over the parser's defaults.

A `.env` file (the current folder's, or --env_file) sets the API keys of the cloud services and
our own tokens in the environment, where the real environment wins. Only key names are ever
logged; values are secrets.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

log = logging.getLogger("livetalking.config")

CONFIG_LIMIT = 1024 * 1024  # a settings file is a few lines; more is a wrong file
ENV_LIMIT = 64 * 1024
DEFAULT_ENV_FILE = ".env"
# The only environment names a .env may set: the services' credentials and our own tokens, so a
# .env cannot change PATH, LD_PRELOAD, PYTHONPATH or what the models' libraries read.
ENV_NAMES = frozenset({"DASHSCOPE_API_KEY", "LIVETALKING_API_TOKEN", "LIVETALKING_ADMIN_TOKEN",
                       "LIVETALKING_PUSH_TOKEN"})
ENV_PREFIXES = ("TENCENT_", "DOUBAO_", "AZURE_", "OPENAI_")
NOTES_DEST = "config_notes"  # the namespace attribute holding what to log once logging is set up

_YAML = "tag:yaml.org,2002:"
# Tags a value may carry: plain data. Anything else (!!python/..., custom tags) is refused
# rather than ignored, so a file written for a loader that runs code fails loudly here.
SAFE_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp", "map"))
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}

Note = tuple[int, str]  # (logging level, message)


class SettingsError(Exception):
    """A settings file that cannot be used; the message names the file and what is wrong."""


@dataclass
class Setting:
    """One key of the config file matched to its flag."""

    key: str  # as written, with its section: "server.listenport"
    line: int
    action: argparse.Action
    node: Node


# --- the entry points app.parse_args calls --------------------------------------------------------


def preload(parser: argparse.ArgumentParser, argv: list[str] | None) -> list[str]:
    """The command line to choose the model's flags from: `argv` (or sys.argv's), with the
    config file's `model:` put first when the command line names no --model. Called before
    the model's flags are added, since the model decides which flags exist."""
    args = list(sys.argv[1:] if argv is None else argv)
    _ensure_env_flag(parser)
    early = _early_flags(args)
    if early.config is None or early.model is not None:
        return args
    try:
        root = read_config(early.config)
        settings, _ = collect(parser, root)  # the model's own keys are not flags yet: skipped here
        model = [s for s in settings if s.action.dest == "model"]
        value = convert(model[0]) if model else None
    except SettingsError as exc:
        parser.error(str(exc))
    if value is None:
        return args
    return ["--model", value, *args]


def apply(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Set the parser's defaults from the YAML file `argv` names with --config (CLI > YAML >
    defaults), and load .env; errors through parser.error. What to log (names only) is left
    in the parsed namespace's `config_notes` for `log_notes`, as logging is not set up yet."""
    args = list(sys.argv[1:] if argv is None else argv)
    _ensure_env_flag(parser)
    early = _early_flags(args)
    notes: list[Note] = []
    defaults: dict[str, Any] = {}
    try:
        if early.config is not None:
            defaults = config_defaults(parser, early.config, _model_of(parser, early))
            parser.set_defaults(**defaults)
            if defaults:
                notes.append((logging.INFO, f"config {early.config}: set {', '.join(sorted(defaults))}"))
        env_file = early.env_file or defaults.get("env_file")
        notes += load_env(env_file or DEFAULT_ENV_FILE, explicit=env_file is not None)
    except SettingsError as exc:
        parser.error(str(exc))
    parser.set_defaults(**{NOTES_DEST: notes})


def log_notes(opt: argparse.Namespace) -> None:
    """Log what apply found (the keys set, never their values); call once logging is set up."""
    for level, message in getattr(opt, NOTES_DEST, []):
        log.log(level, "%s", message)


# --- the config file -----------------------------------------------------------------------------


def read_config(path: str) -> MappingNode | None:
    """The file's top-level mapping as YAML nodes (None for an empty file). Nodes, not Python
    values: the keys' lines go into errors, and each value is read as its flag's text."""
    text = _read_limited(Path(path), CONFIG_LIMIT, f"config file {path}")
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if isinstance(root, MappingNode):
            # YAML merge keys (<<: *base) become plain keys, in the file and in its sections.
            loader.flatten_mapping(root)
            for _, value in root.value:
                if isinstance(value, MappingNode):
                    loader.flatten_mapping(value)
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {_one_line(exc)}") from None
    finally:
        loader.dispose()
    if root is None:
        return None
    if not isinstance(root, MappingNode):
        raise SettingsError(f"config file {path} must be a mapping of settings (key: value), not a {_kind(root)}")
    return root


def config_defaults(parser: argparse.ArgumentParser, path: str, model: str) -> dict[str, Any]:
    """The parser defaults the config file at `path` sets, by dest; every error in it at once."""
    root = read_config(path)
    settings, unknown = collect(parser, root)
    problems = [(line, _unknown_message(parser, key, line)) for key, line in unknown]
    defaults: dict[str, Any] = {}
    for setting in settings:
        try:
            defaults[setting.action.dest] = convert(setting)
        except SettingsError as exc:
            problems.append((setting.line, str(exc)))
    if problems:
        lines = [message for _, message in sorted(problems, key=lambda p: p[0])]
        if unknown:
            lines.append(f"(keys are the flags of `python app.py --help`; a model's own flags exist only "
                         f"with that model, here --model {model})")
        raise SettingsError(f"config file {path}:\n  " + "\n  ".join(lines))
    for setting in settings:
        setting.action.required = False  # the file gave it
    return defaults


def collect(
    parser: argparse.ArgumentParser, root: MappingNode | None
) -> tuple[list[Setting], list[tuple[str, int]]]:
    """Match the file's keys to flags: the settings found, and the unknown keys with their lines.
    A key that is no flag and holds a mapping is a section, whose keys are flags."""
    index = FlagIndex(parser)
    settings: list[Setting] = []
    unknown: list[tuple[str, int]] = []
    for key, line, value in _items(root):
        action = index.find(key, line)
        if action is not None:
            settings.append(Setting(key, line, action, value))
        elif isinstance(value, MappingNode):
            for inner, inner_line, inner_value in _items(value):
                inner_action = index.find(inner, inner_line)
                if inner_action is None:
                    unknown.append((f"{key}.{inner}", inner_line))
                else:
                    settings.append(Setting(f"{key}.{inner}", inner_line, inner_action, inner_value))
        else:
            unknown.append((key, line))
    _refuse_repeats(settings)
    return settings, unknown


def convert(setting: Setting) -> Any:
    """The value of a setting as parse_args would make it from the command line."""
    action, node = setting.action, setting.node
    where = f"line {setting.line}: {setting.key}"
    if action.dest == "config":
        raise SettingsError(f"{where}: a config file cannot name another; give --config on the command line")
    if not isinstance(node, ScalarNode):
        raise SettingsError(f"{where} takes one value, not a {_kind(node)}")
    if node.tag not in SAFE_TAGS:
        raise SettingsError(f"{where}: the YAML tag {node.tag} is not allowed")
    if action.nargs == 0:  # store_true / store_false: on or off
        return _switch(setting, where)
    if action.nargs is not None or type(action) is not argparse._StoreAction:
        raise SettingsError(f"{where}: --{action.dest} cannot be set from a config file; give it on the command line")
    if node.tag == _YAML + "null":
        if action.default is None:
            return None
        raise SettingsError(f"{where} needs a value (its default is {action.default!r})")
    # The text as written, as the command line would give it: `barge_in: off` is "off" (not
    # YAML 1.1's False), `avatar_id: 007` keeps its zeros, `listenport: "9123"` is a number.
    value: Any = node.value
    if action.type is not None:
        try:
            value = action.type(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            kind = getattr(action.type, "__name__", "the flag's type")
            raise SettingsError(f"{where}: {_show(node.value)} is not a valid {kind}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise SettingsError(f"{where}: {_show(node.value)} is not one of: {choices}")
    return value


def _switch(setting: Setting, where: str) -> bool:
    """A store_true/store_false flag's dest from a YAML true/false (nothing else: `flag: "no"`
    or `flag: 0` might mean either)."""
    if setting.node.tag != _YAML + "bool":
        raise SettingsError(f"{where} takes true or false, not {_show(setting.node.value)}")
    return yaml.SafeLoader.bool_values[setting.node.value.lower()]


class FlagIndex:
    """The parser's flags by the names a key may use: the dest or long option, `-` or `_`,
    and any case when only one flag has that name in any case."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.exact: dict[str, argparse.Action] = {}
        self.folded: dict[str, list[argparse.Action]] = {}
        for action in parser._actions:
            if action.dest in (argparse.SUPPRESS, "help") or not action.option_strings:
                continue
            names = {action.dest} | {o[2:] for o in action.option_strings if o.startswith("--")}
            for name in {_norm(n) for n in names}:
                self.exact[name] = action
                group = self.folded.setdefault(name.lower(), [])
                if action not in group:
                    group.append(action)

    def find(self, key: str, line: int) -> argparse.Action | None:
        name = _norm(key)
        if name in self.exact:
            return self.exact[name]
        candidates = self.folded.get(name.lower(), [])
        if len(candidates) > 1:
            spelled = " or ".join(a.dest for a in candidates)
            raise SettingsError(f"line {line}: {key} could be {spelled}; write the flag's exact name")
        return candidates[0] if candidates else None

    def names(self) -> list[str]:
        return sorted({a.dest for a in self.exact.values()})


def _unknown_message(parser: argparse.ArgumentParser, key: str, line: int) -> str:
    names = FlagIndex(parser).names()
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(_norm(key.rsplit(".", 1)[-1]).lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f" (did you mean {by_lower[close[0]]}?)" if close else ""
    return f"line {line}: unknown key {key}{hint}"


def _refuse_repeats(settings: list[Setting]) -> None:
    seen: dict[str, Setting] = {}
    for setting in settings:
        first = seen.setdefault(setting.action.dest, setting)
        if first is not setting:
            raise SettingsError(f"line {setting.line}: {setting.key} sets {setting.action.dest} again "
                                f"(line {first.line}: {first.key})")


def _items(node: MappingNode | None) -> list[tuple[str, int, Node]]:
    """The (key, line, value node) of a mapping; keys must be plain names."""
    items = []
    for key_node, value_node in node.value if node is not None else []:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, ScalarNode) or key_node.tag != _YAML + "str":
            shown = _show(key_node.value) if isinstance(key_node, ScalarNode) else f"a {_kind(key_node)}"
            raise SettingsError(f"line {line}: a key must be a flag's name, not {shown}")
        items.append((key_node.value, line, value_node))
    return items


def _model_of(parser: argparse.ArgumentParser, early: argparse.Namespace) -> str:
    return early.model or parser.get_default("model") or "portrait"


# --- .env ----------------------------------------------------------------------------------------


def load_env(path: str, explicit: bool, environ: MutableMapping[str, str] | None = None) -> list[Note]:
    """Put the allowed keys of the .env file at `path` into the environment, where the real
    environment wins; what to log: names only. A missing file is fine unless `explicit`."""
    environ = os.environ if environ is None else environ
    file = Path(path)
    if not file.exists() and not explicit:
        return []
    values = read_env_file(file)
    notes: list[Note] = []
    ignored = sorted(k for k in values if not env_key_allowed(k))
    if ignored:
        allowed = ", ".join(sorted(ENV_NAMES)) + ", " + ", ".join(p + "*" for p in ENV_PREFIXES)
        notes.append((logging.WARNING, f"{path}: ignored {', '.join(ignored)} (a .env sets only {allowed})"))
    wanted = [k for k in values if env_key_allowed(k)]
    kept = sorted(k for k in wanted if k in environ)
    loaded = sorted(k for k in wanted if k not in environ)
    for key in loaded:
        environ[key] = values[key]
    if loaded:
        notes.append((logging.INFO, f"loaded {len(loaded)} key{'s' * (len(loaded) != 1)} from {path}: "
                                    f"{', '.join(loaded)}"))
    if kept:
        notes.append((logging.INFO, f"{path}: kept the environment's {', '.join(kept)}"))
    return notes


def env_key_allowed(key: str) -> bool:
    return key in ENV_NAMES or key.startswith(ENV_PREFIXES)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (optional `export `, quotes, # comments, blank lines). Errors name the
    file and line but never show the line: it may hold a secret."""
    text = _read_limited(path, ENV_LIMIT, f"env file {path}")
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export"):].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY.fullmatch(key):
            raise SettingsError(f"env file {path}: line {number} is not KEY=value")
        try:
            values[key] = _env_value(rest)
        except ValueError as exc:
            raise SettingsError(f"env file {path}: line {number} ({key}): {exc}") from None
    return values


def _env_value(rest: str) -> str:
    text = rest.lstrip()
    if not text or text[0] not in "\"'":
        # Unquoted: a # after a space starts a comment (`KEY=abc#1` keeps its #).
        return re.split(r"\s#", rest, maxsplit=1)[0].strip()
    quote = text[0]
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            tail = text[i + 1:].strip()
            if tail and not tail.startswith("#"):
                raise ValueError("text after the closing quote")
            return "".join(out)
        if ch == "\\" and quote == '"' and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_DQ_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    raise ValueError("the quote is not closed (values are one line)")


# --- helpers -------------------------------------------------------------------------------------


def _ensure_env_flag(parser: argparse.ArgumentParser) -> None:
    if not any(a.dest == "env_file" for a in parser._actions):
        parser.add_argument("--env_file", default=None,
                            help=f"a .env file of API keys and tokens to load (default {DEFAULT_ENV_FILE} in the "
                                 "current folder, if there); the environment's own values win")


def _early_flags(args: list[str]) -> argparse.Namespace:
    """--config, --env_file and --model from the command line, before the full parser can run
    (its flags depend on them). A malformed one is left for the full parser to report."""
    early = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for flag in ("--config", "--env_file", "--model"):
        early.add_argument(flag, default=None)
    try:
        return early.parse_known_args(args)[0]
    except argparse.ArgumentError:
        return argparse.Namespace(config=None, env_file=None, model=None)


def _read_limited(path: Path, limit: int, what: str) -> str:
    try:
        if not path.is_file():
            raise SettingsError(f"{what} not found" if not path.exists() else f"{what} is not a file")
        if path.stat().st_size > limit:
            raise SettingsError(f"{what} is larger than {limit // 1024} KiB")
        with path.open("rb") as f:
            data = f.read(limit + 1)  # the file may grow after the stat
    except OSError as exc:
        raise SettingsError(f"{what} cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SettingsError(f"{what} is larger than {limit // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SettingsError(f"{what} is not UTF-8 text") from None


def _norm(name: str) -> str:
    return name.strip().replace("-", "_")


def _kind(node: Node) -> str:
    return {"MappingNode": "mapping", "SequenceNode": "list", "ScalarNode": "single value"}.get(
        type(node).__name__, "value")


def _show(value: str) -> str:
    value = str(value)
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _one_line(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the line itself: it may hold a secret."""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
