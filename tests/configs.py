"""A minimal config file around one driver's YAML, for tests of driver option checks."""

from __future__ import annotations

from pathlib import Path


def config_with_driver(tmp_path: Path, driver: str) -> Path:
    """gateway/store/uplink sections plus ``driver`` (YAML lines of one list item, already
    indented under ``drivers:``); its first line is line 5 of the file."""
    p = tmp_path / "c.yaml"
    p.write_text(
        "gateway: {id: gw-1}\n"
        f"store: {{path: {tmp_path / 's.db'}}}\n"
        "uplink: {host: localhost, ca: ca.pem, cert: c.pem, key: k.pem, signing_key: s.key}\n"
        "drivers:\n" + driver)
    return p
