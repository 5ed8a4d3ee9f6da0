"""docs/configuration.md is generated from the schema: stale or undocumented keys fail here."""

from __future__ import annotations

from tests.gwproc import ROOT
from tools.configdoc import render, undocumented


def test_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), ("docs/configuration.md is stale: run "
                                   "`python -m tools.configdoc > docs/configuration.md`")


def test_every_key_has_help_text() -> None:
    assert undocumented() == []


def test_reference_lists_keys_users_asked_about() -> None:
    text = render()
    for key in ("reply_timeout_ms", "profile_backfill_s", "report_min_s", "report_max_s",
                "response_timeout_s", "metrics.listen", "logging.format"):
        assert f"`{key}`" in text or f"[].{key}`" in text, key
