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
