"""The ``kscale`` command: one entry point for the tools that do not need Hydra.

    kscale report results/<name>      refit and redraw a study (= python -m kscale.report)
    kscale toy train|entropy ...      the toy ladder and its language (= python -m kscale.toy)

Sweeps run through ``python run_sweep.py`` (Hydra owns that command line).
"""
from __future__ import annotations

import importlib
import sys

from kscale.registry import did_you_mean

_COMMANDS = {
    "report": ("kscale.report", "regenerate figures and summary.md from a study's results table"),
    "toy": ("kscale.toy.__main__", "train the toy ladder / print its language's entropy rate"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: kscale <command> [args]", "", "commands:"]
        lines += [f"  {name:<8} {help_}" for name, (_, help_) in _COMMANDS.items()]
        lines += ["", "sweeps: python run_sweep.py [overrides]   (see README.md)"]
        print("\n".join(lines))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        print(f"kscale: unknown command {command!r}.{did_you_mean(command, list(_COMMANDS))} "
              f"Available: {', '.join(_COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
