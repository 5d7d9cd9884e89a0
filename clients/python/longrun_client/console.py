"""Entry point of the `longrun` command: a clear message instead of a
traceback when the `cli` extra (click, rich) is not installed."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from longrun_client.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name in {"click", "rich"}:
            sys.exit(
                f"longrun: the command line needs {exc.name}; "
                "install it with: pip install 'longrun-client[cli]'"
            )
        raise
    cli_main()
