"""Trials (changes that must prove themselves) and the launcher that survives bad releases.

Standard library only, and runnable as a plain script: ``tools/install.sh`` copies this file
to ``/opt/gateway/launcher.py``, OUTSIDE the A/B release slots, and the systemd unit runs it.
A release can therefore never break the piece that rolls it back.

A *trial* is a pending change (new release, new config, new credentials) recorded in
``STATE_DIR/trial.json`` with the file operations that undo it and those that make it
permanent. The runtime commits it once its health checks pass within the deadline, or undoes
it when they fail. When the new code cannot even get that far (it crashes at start-up), the
launcher counts the attempts and undoes the trial itself after ``max_attempts``::

    python3 /opt/gateway/launcher.py --root /opt/gateway --state-dir /var/lib/gateway/fleet \
        -- run -c /etc/gateway/gateway.yaml

It then ``exec``s ``python -m gateway ARGS`` from ``ROOT/current`` (same PID, so systemd's
Type=notify and watchdog see the runtime itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

TRIAL_FILE = "trial.json"
OUTCOMES_FILE = "outcomes.json"
MAX_OUTCOMES = 50


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_json_atomic(path: str | os.PathLike[str], obj: Any, mode: int = 0o644) -> None:
    """Temp file, fsync, rename, fsync the directory: old or new content after any crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, sort_keys=True, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        print(f"launcher: ignoring unreadable {path}: {e}", file=sys.stderr)
        return default


def switch_symlink(link: str | os.PathLike[str], target: str) -> None:
    """Point ``link`` at ``target`` atomically (a new symlink renamed over the old one)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.new")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def copy_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.restore")
    shutil.copy2(src, tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def run_ops(ops: list[dict[str, Any]]) -> None:
    """Idempotent file operations: a crash half-way and a second run give the same result."""
    for op in ops:
        kind = op.get("op")
        if kind == "symlink":
            switch_symlink(op["link"], op["target"])
        elif kind == "restore":
            if os.path.exists(op["backup"]):
                copy_atomic(op["backup"], op["path"])
        elif kind == "write_json":
            write_json_atomic(op["path"], op["data"])
        elif kind == "remove":
            try:
                os.unlink(op["path"])
            except FileNotFoundError:
                pass
        else:
            raise ValueError(f"unknown trial operation {kind!r}")


def load_trial(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    t = read_json(Path(state_dir) / TRIAL_FILE)
    return t if isinstance(t, dict) else None


def save_trial(state_dir: str | os.PathLike[str], trial: dict[str, Any]) -> None:
    write_json_atomic(Path(state_dir) / TRIAL_FILE, trial)


def finish_trial(state_dir: str | os.PathLike[str], trial: dict[str, Any], ok: bool,
                 reason: str) -> dict[str, Any]:
    """Commit (ok) or undo the trial, record the outcome for the runtime to report, forget
    the trial. Safe to repeat after a crash at any point."""
    run_ops(trial.get("commit" if ok else "undo", []))
    outcome = {"kind": trial.get("kind", "trial"), "id": trial.get("id", ""), "ok": ok,
               "reason": reason, "attempts": trial.get("attempts", 0),
               "info": trial.get("info", {}), "ts_ms": now_ms()}
    path = Path(state_dir) / OUTCOMES_FILE
    outcomes = [o for o in read_json(path, []) if o.get("id") != outcome["id"]]
    write_json_atomic(path, (outcomes + [outcome])[-MAX_OUTCOMES:])
    try:
        os.unlink(Path(state_dir) / TRIAL_FILE)
        fsync_dir(state_dir)
    except FileNotFoundError:
        pass
    return outcome


def read_outcomes(state_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    got = read_json(Path(state_dir) / OUTCOMES_FILE, [])
    return got if isinstance(got, list) else []


def drop_outcomes(state_dir: str | os.PathLike[str], ids: set[str]) -> None:
    path = Path(state_dir) / OUTCOMES_FILE
    left = [o for o in read_outcomes(state_dir) if o.get("id") not in ids]
    write_json_atomic(path, left)


def count_attempt(state_dir: str | os.PathLike[str]) -> str | None:
    """Called before every start: count it, and undo a trial that keeps crashing.
    Returns a message when it rolled back."""
    trial = load_trial(state_dir)
    if trial is None:
        return None
    trial["attempts"] = int(trial.get("attempts", 0)) + 1
    limit = int(trial.get("max_attempts", 3))
    if trial["attempts"] > limit:
        reason = (f"the new {trial.get('kind', 'change')} did not pass its health checks in "
                  f"{limit} starts (crashed or hung); rolled back")
        trial["attempts"] -= 1
        finish_trial(state_dir, trial, False, reason)
        return reason
    save_trial(state_dir, trial)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launcher", description="Start the gateway from the "
                                "current A/B slot, rolling back a trial that keeps crashing.")
    p.add_argument("--root", required=True, help="release root holding current -> releases/X")
    p.add_argument("--state-dir", required=True, help="fleet state directory (trial.json)")
    p.add_argument("--python", default=sys.executable, help="interpreter to run the gateway")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- gateway arguments")
    a = p.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    os.makedirs(a.state_dir, exist_ok=True)
    msg = count_attempt(a.state_dir)
    if msg:
        print(f"launcher: {msg}", file=sys.stderr, flush=True)
    current = Path(a.root) / "current"
    try:
        slot = current.resolve(strict=True)
    except OSError:
        print(f"launcher: {current} is missing; is the gateway installed?", file=sys.stderr)
        return 1
    env = dict(os.environ, PYTHONPATH=str(slot))
    os.chdir(slot)  # `python -m` puts the cwd first on sys.path
    os.execve(a.python, [a.python, "-m", "gateway", *args], env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
