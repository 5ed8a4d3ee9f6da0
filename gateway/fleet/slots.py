"""The A/B release layout: ``ROOT/releases/A``, ``ROOT/releases/B`` and ``ROOT/current``, a
relative symlink switched atomically (rename over it), so a power cut leaves one or the
other release current, never neither."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SLOTS = ("A", "B")


class LayoutError(Exception):
    pass


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def current(self) -> Path:
        return self.root / "current"

    def slot_dir(self, slot: str) -> Path:
        return self.root / "releases" / slot

    def link_target(self, slot: str) -> str:
        return f"releases/{slot}"

    def active_slot(self) -> str:
        try:
            target = os.readlink(self.current)
        except OSError:
            raise LayoutError(f"{self.current} is not a symlink: the gateway is not installed "
                              "in an A/B layout (see tools/install.sh)") from None
        name = Path(target).name
        if name not in SLOTS or Path(target).parent.name != "releases":
            raise LayoutError(f"{self.current} points at {target!r}, not releases/A or B")
        return name

    def inactive_slot(self) -> str:
        return SLOTS[1 - SLOTS.index(self.active_slot())]

    def release_info(self, slot: str) -> dict:
        """What a slot holds: its signed MANIFEST.json if installed by OTA, else RELEASE.json."""
        for name in ("MANIFEST.json", "RELEASE.json"):
            try:
                return json.loads((self.slot_dir(slot) / name).read_text())
            except (OSError, ValueError):
                continue
        return {}
