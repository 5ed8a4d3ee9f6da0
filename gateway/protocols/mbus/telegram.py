"""The decoded telegram and the link-level pieces every M-Bus layer shares.

Kept below :mod:`.transport`, :mod:`.wireless`, :mod:`.fixed` and the manufacturer
profiles so that each of them can name a ``Telegram``, read an identification number or
a link header without importing the others (which once made an import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .records import DataRecord
from .tables import device_type_name, manufacturer_code, status_flags


def bcd_id(b: bytes) -> str:
    """The 4-byte identification number, little-endian BCD, as its 8 digits ("76348799")."""
    return bytes(b[::-1]).hex().upper()


@dataclass(slots=True)
class Afl:
    """Authentication and fragmentation layer fields needed by security mode 7."""

    fcl: int
    mcl: int | None = None
    ki: int | None = None
    counter: int | None = None
    counter_raw: bytes = b""
    mac: bytes = b""
    ml: bytes = b""


@dataclass(slots=True)
class Context:
    """What the layers below know when the TPL starts: the link-layer address (wireless),
    the key for this meter, the AFL (wireless), and a header dict for error reports."""

    header: dict[str, Any]
    m_field: bytes | None = None   # DLL M, 2 bytes as sent
    a_field: bytes | None = None   # DLL A, 6 bytes as sent (id, version, type)
    key: bytes | None = None
    afl: Afl | None = None
    frame: bytes = b""             # the whole (CRC-free) message, for the AFL MAC
    formats: Any = None            # compact.Formats of this listening session, or None


@dataclass(slots=True)
class Telegram:
    """A decoded RSP_UD (wired) or SND_NR (wireless) telegram."""

    manufacturer: str
    id: str
    version: int
    device_type: int
    access_number: int | None
    status: int | None
    records: list[DataRecord]
    ci: int
    config: int = 0
    security_mode: int = 0
    manufacturer_data: bytes = b""
    more_records_follow: bool = False
    link: str = "wired"
    c_field: int | None = None
    address: int | None = None                 # wired primary address
    extra: dict[str, Any] = field(default_factory=dict)  # ELL/AFL/DLL details

    @property
    def status_flags(self) -> list[str]:
        return [] if self.status is None else status_flags(self.status)

    @property
    def device_type_name(self) -> str:
        return device_type_name(self.device_type)

    def header(self) -> dict[str, Any]:
        return {"manufacturer": self.manufacturer, "id": self.id, "version": self.version,
                "device_type": self.device_type, "access_number": self.access_number}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "manufacturer": self.manufacturer,
            "id": self.id,
            "version": self.version,
            "device_type": self.device_type_name,
            "device_type_code": self.device_type,
            "access_number": self.access_number,
            "status": self.status,
            "status_flags": self.status_flags,
            "records": [r.to_json() for r in self.records],
            "link": self.link,
            "ci": f"0x{self.ci:02X}",
            "security_mode": self.security_mode,
            "more_records_follow": self.more_records_follow,
            "manufacturer_data": self.manufacturer_data.hex().upper() or None,
        }
        if self.c_field is not None:
            out["c_field"] = f"0x{self.c_field:02X}"
        if self.address is not None:
            out["address"] = self.address
        out.update(self.extra)
        return out


def dll_header(frame: bytes) -> dict[str, Any]:
    """Manufacturer, id, version and device type from the link layer (no checks)."""
    return {"manufacturer": manufacturer_code(int.from_bytes(frame[2:4], "little")),
            "id": bcd_id(frame[4:8]), "version": frame[8], "device_type": frame[9]}
