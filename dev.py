#!/usr/bin/env python3
"""Developer entry point; needs only Python 3.11+ (stdlib), works on a fresh clone.

    python3 dev.py test [pytest args...]   ruff check, mypy, then pytest
    python3 dev.py demo [args...]          run `reality demo`
    python3 dev.py bench <script> [args]   run bench/<script>.py

Each creates ./.venv on first use and installs the project into it (editable), re-installing
only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
USAGE = __doc__.split("\n\n")[1]


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def run(step: str, cmd: list[str]) -> int:
    say(f"{step}: {' '.join(cmd)}")
    return subprocess.call(cmd, cwd=ROOT)


def bootstrap(extra: str) -> None:
    """Make sure .venv exists and holds the project installed with `.[extra]`."""
    if not PYTHON.exists():
        say(f"creating virtual environment {VENV}")
        venv.create(VENV, with_pip=True)
        (VENV / ".gitignore").write_text("*\n")  # keep git from ever seeing it
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / f".reality-installed-{extra}"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check"]
    if run("install", [*pip, "install", "--editable", f".[{extra}]"]) != 0:
        sys.exit(f"dev.py: could not install the project with extra [{extra}]")
    stamp.write_text(digest + "\n")


def cmd_test(args: list[str]) -> int:
    bootstrap("dev")
    steps = [
        ("ruff", [str(PYTHON), "-m", "ruff", "check", "."]),
        ("mypy", [str(PYTHON), "-m", "mypy"]),
        ("pytest", [str(PYTHON), "-m", "pytest", *args]),
    ]
    for step, cmd in steps:
        code = run(step, cmd)
        if code != 0:
            say(f"{step} FAILED (exit code {code})")
            return code
    say("all checks passed")
    return 0


def cmd_demo(args: list[str]) -> int:
    bootstrap("demo")
    exe = BIN / "reality"
    say(f"exec: {exe} demo {' '.join(args)}")
    os.chdir(ROOT)
    os.execv(exe, [str(exe), "demo", *args])


def cmd_bench(args: list[str]) -> int:
    if not args:
        scripts = sorted(p.stem for p in (ROOT / "bench").glob("*.py"))
        sys.exit(f"usage: python3 dev.py bench <script> [args]; scripts: {', '.join(scripts)}")
    script = ROOT / "bench" / f"{args[0]}.py"
    if not script.is_file():
        sys.exit(f"dev.py: no such benchmark: {script}")
    bootstrap("dev")
    return run("bench", [str(PYTHON), str(script), *args[1:]])


COMMANDS = {"test": cmd_test, "demo": cmd_demo, "bench": cmd_bench}


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036  (a clear message on an old python3)
        sys.exit("dev.py needs Python 3.11 or newer")
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
