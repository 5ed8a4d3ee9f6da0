"""The installed package carries the head-end and never a generic top-level `tools`."""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_packages_exclude_the_tools_tree() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    # what setuptools' find: does (without needing setuptools in the venv)
    pkgs = [".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.rglob("__init__.py")
            if ".venv" not in p.parts]
    found = [p for p in pkgs if any(fnmatch.fnmatchcase(p, pat) for pat in include)]
    assert "gateway.headend" in found
    assert not [p for p in found if p == "tools" or p.startswith("tools.")]
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "gateway-headend = gateway.headend.cli:main" in scripts
    assert "psycopg[binary]" in cfg["options.extras_require"]["headend"]


def test_the_installed_package_never_imports_tools() -> None:
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*.py")
           if re.search(r"^\s*(from|import) tools\b", p.read_text(), re.M)]
    assert bad == []
