"""`make demo` starts every run with an empty store, so its fresh head-end verifier can
judge the run (a kept store would start at the last run's seq + 1: all 'missing')."""

from __future__ import annotations

from tools.demo import fresh_store


def test_each_demo_run_starts_with_an_empty_store(tmp_path, capsys) -> None:
    db = tmp_path / "store.db"
    for suffix in ("", "-wal", "-shm", ".reserve"):
        (tmp_path / f"store.db{suffix}").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("not the store")
    fresh_store(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert "removed the previous run's store" in capsys.readouterr().out
    fresh_store(db)  # nothing there: nothing said, no error
    assert capsys.readouterr().out == ""


def test_demo_refuses_a_second_run_and_ctrl_c_gives_the_verdict_after_the_drain(tmp_path) -> None:
    """`make demo` as a new user runs it: a second one is refused while the first runs;
    Ctrl-C stops the gateway, lets it drain, and only then prints the head-end's verdict;
    the pty links are gone afterwards."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.gwproc import ROOT
    from tests.waiting import wait_for

    log = tmp_path / "demo.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DEMO_QUIET": "1"}
    with open(log, "wb") as out:
        first = subprocess.Popen([sys.executable, "-m", "tools.demo"], cwd=ROOT, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert wait_for(lambda: "gateway gw-0001 running" in log.read_text(), timeout=60), \
                log.read_text()[-3000:]
            second = subprocess.run([sys.executable, "-m", "tools.demo", "--seconds", "1"],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            assert second.returncode == 1
            assert f"another demo is running (pid {first.pid})" in second.stderr
            assert wait_for(lambda: "headend |" in log.read_text() or "ready" in log.read_text(),
                            timeout=30)
            os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole group
            assert first.wait(120) == 0, log.read_text()[-3000:]
        finally:
            if first.poll() is None:  # a failed test must not leave a demo running
                os.killpg(first.pid, signal.SIGTERM)
                try:
                    first.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(first.pid, signal.SIGKILL)
                    first.wait(10)
    text = log.read_text()
    assert "attach the field-tech console with `make console`" in text
    stopped = text.index("stopped cleanly")
    verdict = text.index("OK: nothing lost, duplicated, forged or replayed")
    assert verdict > stopped, text[-3000:]
    assert not [p for p in Path("/tmp/gateway-demo").glob("tty*") if p.is_symlink()]
