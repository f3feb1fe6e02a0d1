"""--config config.yaml and .env: settings kept in files (stub, filled in by its owner)."""

from __future__ import annotations

import argparse


def apply(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Set the parser's defaults from the YAML file `argv` names with --config (CLI > YAML >
    defaults), and load .env; errors through parser.error."""
    return None
