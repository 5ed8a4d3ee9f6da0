"""EN 13757-3 knowledge as tables: DIF, VIF (primary, FD, FB), combinable VIFE, device
types, status bits, CI fields. Section/table numbers refer to EN 13757-3:2018 and
EN 13757-4:2019; OMS Vol. 2 where it says so.

Units are normalised so one quantity always has one unit whatever the meter's VIF: energy
in kWh (Wh and MWh VIFs shift the decimal exponent, which is exact), volume in m3, mass in
kg, power in W, times in seconds. Quantities whose units are not a power of ten apart keep
their own unit (J vs kWh, m3/h vs m3/min, degrees F).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

# --------------------------------------------------------------------------- DIF (6.3)

# Data field (DIF bits 0-3) -> (length in bytes, coding). Length -1 = variable (LVAR).
DATA_FIELDS: Final[dict[int, tuple[int, str]]] = {
    0x0: (0, "none"),
    0x1: (1, "int"),
    0x2: (2, "int"),
    0x3: (3, "int"),
    0x4: (4, "int"),
    0x5: (4, "real"),
    0x6: (6, "int"),
    0x7: (8, "int"),
    0x8: (0, "none"),  # selection for readout: no data in a response
    0x9: (1, "bcd"),
    0xA: (2, "bcd"),
    0xB: (3, "bcd"),
    0xC: (4, "bcd"),
    0xD: (-1, "lvar"),
    0xE: (6, "bcd"),
    # 0xF: special functions, see SPECIAL_DIF
}

# Function field (DIF bits 4-5), 6.3.2.
FUNCTIONS: Final[tuple[str, ...]] = ("instantaneous", "maximum", "minimum", "error")

# Special DIFs (data field 0xF), Table 8.
DIF_MANUFACTURER = 0x0F       # manufacturer-specific data follow, to the end
DIF_MORE_FOLLOWS = 0x1F       # same, and more records follow in the next telegram
DIF_IDLE_FILLER = 0x2F
DIF_GLOBAL_READOUT = 0x7F

MAX_DIFE = 10  # EN 13757-3 6.3.3: at most 10 DIFE
MAX_VIFE = 10  # 6.4.1: at most 10 VIFE

# --------------------------------------------------------------------------- VIF (6.4)


@dataclass(frozen=True, slots=True)
class Vif:
    """What a VIF (with its extension byte, if any) means.

    kind: number | date | datetime | duration | flags | text | bytes.
    For ``duration`` the value is converted to seconds with ``seconds`` when that factor is
    exact (s, min, h, d); month/year durations keep their own unit.
    """

    quantity: str
    unit: str = ""
    exponent: int = 0
    kind: str = "number"
    seconds: int = 1


_TIME_UNITS: Final[tuple[tuple[str, int], ...]] = (("s", 1), ("s", 60), ("s", 3600), ("s", 86400))
_TIME_UNITS_HDMY: Final[tuple[tuple[str, int], ...]] = (("s", 3600), ("s", 86400), ("month", 1),
                                                        ("year", 1))


def _duration(quantity: str, nn: int, units: tuple[tuple[str, int], ...] = _TIME_UNITS) -> Vif:
    unit, factor = units[nn & 3]
    return Vif(quantity, unit, 0, "duration", factor)


def _primary() -> dict[int, Vif]:
    """Table 10: primary VIF codes (extension bit masked off)."""
    t: dict[int, Vif] = {}
    for n in range(8):
        t[0x00 | n] = Vif("Energy", "kWh", n - 6)          # 10^(n-3) Wh
        t[0x08 | n] = Vif("Energy", "J", n)                # 10^n J
        t[0x10 | n] = Vif("Volume", "m3", n - 6)           # 10^(n-6) m3
        t[0x18 | n] = Vif("Mass", "kg", n - 3)             # 10^(n-3) kg
        t[0x28 | n] = Vif("Power", "W", n - 3)             # 10^(n-3) W
        t[0x30 | n] = Vif("Power", "J/h", n)               # 10^n J/h
        t[0x38 | n] = Vif("Volume flow", "m3/h", n - 6)
        t[0x40 | n] = Vif("Volume flow", "m3/min", n - 7)
        t[0x48 | n] = Vif("Volume flow", "m3/s", n - 9)
        t[0x50 | n] = Vif("Mass flow", "kg/h", n - 3)
    for n in range(4):
        t[0x20 | n] = _duration("On time", n)
        t[0x24 | n] = _duration("Operating time", n)
        t[0x58 | n] = Vif("Flow temperature", "°C", n - 3)
        t[0x5C | n] = Vif("Return temperature", "°C", n - 3)
        t[0x60 | n] = Vif("Temperature difference", "K", n - 3)
        t[0x64 | n] = Vif("External temperature", "°C", n - 3)
        t[0x68 | n] = Vif("Pressure", "bar", n - 3)
        t[0x70 | n] = _duration("Averaging duration", n)
        t[0x74 | n] = _duration("Actuality duration", n)
    t[0x6C] = Vif("Date", kind="date")                      # type G
    t[0x6D] = Vif("Date and time", kind="datetime")         # type F, I or J by length
    t[0x6E] = Vif("HCA units")                              # heat cost allocator units
    t[0x6F] = Vif("Reserved VIF 0x6F", kind="bytes")
    t[0x78] = Vif("Fabrication number", kind="flags")       # an identifier, not a measure
    t[0x79] = Vif("Enhanced identification", kind="flags")
    t[0x7A] = Vif("Bus address", kind="flags")
    t[0x7E] = Vif("Any VIF")                                 # readout selection
    t[0x7F] = Vif("Manufacturer specific", kind="mfr")
    return t


def _fd() -> dict[int, Vif]:
    """Table 12: main VIFE code extension table (after VIF 0xFD)."""
    t: dict[int, Vif] = {}
    for n in range(4):
        t[0x00 | n] = Vif("Credit", "currency", n - 3)
        t[0x04 | n] = Vif("Debit", "currency", n - 3)
        t[0x24 | n] = _duration("Storage interval", n)
        t[0x2C | n] = _duration("Duration since last readout", n)
        t[0x34 | n] = _duration("Period of tariff", n)
        t[0x68 | n] = _duration("Duration since last cumulation", n, _TIME_UNITS_HDMY)
        t[0x6C | n] = _duration("Operating time battery", n, _TIME_UNITS_HDMY)
    for n in range(1, 4):
        t[0x30 | n] = _duration("Duration of tariff", n)
    names = {
        0x08: "Access number", 0x09: "Device type", 0x0A: "Manufacturer",
        0x0B: "Parameter set identification", 0x0C: "Model/version", 0x0D: "Hardware version",
        0x0E: "Firmware version", 0x0F: "Software version", 0x10: "Customer location",
        0x11: "Customer", 0x12: "Access code user", 0x13: "Access code operator",
        0x14: "Access code system operator", 0x15: "Access code developer", 0x16: "Password",
        0x17: "Error flags", 0x18: "Error mask", 0x19: "Security key", 0x1A: "Digital output",
        0x1B: "Digital input", 0x1F: "Remote control", 0x23: "Tariff and subunit descriptor",
        0x2A: "Operator specific data", 0x3B: "Wireless M-Bus data container",
        0x62: "Control signal", 0x65: "Time point of day change",
        0x66: "State of parameter activation", 0x67: "Special supplier information",
        0x72: "Daylight saving", 0x73: "Listening window management",
        0x76: "Manufacturer protocol data container",
    }
    for code, name in names.items():
        t[code] = Vif(name, kind="flags")
    counters = {
        0x1C: ("Baud rate", "Bd"), 0x1D: ("Response delay time", "bittimes"),
        0x1E: ("Retry", ""), 0x20: ("First storage number", ""),
        0x21: ("Last storage number", ""), 0x22: ("Size of storage block", ""),
        0x28: ("Storage interval", "month"), 0x29: ("Storage interval", "year"),
        0x2B: ("Time point second", "s"), 0x38: ("Period of tariff", "month"),
        0x39: ("Period of tariff", "year"), 0x3A: ("Dimensionless", ""),
        0x60: ("Reset counter", ""), 0x61: ("Cumulation counter", ""),
        0x63: ("Day of week", ""), 0x64: ("Week number", ""), 0x71: ("RF level", "dBm"),
        0x74: ("Remaining battery life", "d"), 0x75: ("Meter stop count", ""),
    }
    for code, (name, unit) in counters.items():
        t[code] = Vif(name, unit)
    t[0x30] = Vif("Start of tariff", kind="datetime")
    t[0x70] = Vif("Battery change", kind="datetime")
    for n in range(16):
        t[0x40 | n] = Vif("Voltage", "V", n - 9)
        t[0x50 | n] = Vif("Current", "A", n - 12)
    return t


def _fb() -> dict[int, Vif]:
    """Table 14: alternate VIFE code extension table (after VIF 0xFB)."""
    t: dict[int, Vif] = {}
    for n in range(2):
        t[0x00 | n] = Vif("Energy", "kWh", n + 2)            # 10^(n-1) MWh
        t[0x08 | n] = Vif("Energy", "J", n + 8)              # 10^(n-1) GJ
        t[0x10 | n] = Vif("Volume", "m3", n + 2)             # 10^(n+2) m3
        t[0x18 | n] = Vif("Mass", "kg", n + 5)               # 10^(n+2) t
        t[0x1A | n] = Vif("Relative humidity", "%", n - 1)   # OMS
        t[0x28 | n] = Vif("Power", "W", n + 5)               # 10^(n-1) MW
        t[0x30 | n] = Vif("Power", "J/h", n + 8)             # 10^(n-1) GJ/h
    t[0x21] = Vif("Volume", "ft3", -1)
    t[0x22] = Vif("Volume", "gal(US)", -1)
    t[0x23] = Vif("Volume", "gal(US)", 0)
    t[0x24] = Vif("Volume flow", "gal(US)/min", -3)
    t[0x25] = Vif("Volume flow", "gal(US)/min", 0)
    t[0x26] = Vif("Volume flow", "gal(US)/h", 0)
    t[0x2A] = Vif("Phase U-U", "°", -1)
    t[0x2B] = Vif("Phase U-I", "°", -1)
    for n in range(4):
        t[0x2C | n] = Vif("Frequency", "Hz", n - 3)
        t[0x58 | n] = Vif("Flow temperature", "°F", n - 3)
        t[0x5C | n] = Vif("Return temperature", "°F", n - 3)
        t[0x60 | n] = Vif("Temperature difference", "°F", n - 3)
        t[0x64 | n] = Vif("External temperature", "°F", n - 3)
        t[0x70 | n] = Vif("Temperature limit", "°F", n - 3)
        t[0x74 | n] = Vif("Temperature limit", "°C", n - 3)
    for n in range(8):
        t[0x78 | n] = Vif("Cumulative count max power", "W", n - 3)
    return t


PRIMARY_VIF: Final[dict[int, Vif]] = _primary()
FD_VIF: Final[dict[int, Vif]] = _fd()
FB_VIF: Final[dict[int, Vif]] = _fb()

VIF_FB = 0x7B        # next byte from Table 14
VIF_PLAIN_TEXT = 0x7C
VIF_FD = 0x7D        # next byte from Table 12
VIF_MANUFACTURER = 0x7F

# --------------------------------------------------------------------------- combinable VIFE (Table 15/16)

# Error codes a slave puts in the first VIFE (E000 xxxx / E001 xxxx), Table 16.
VIFE_ERRORS: Final[dict[int, str]] = {
    0x00: "none", 0x01: "too many DIFEs", 0x02: "storage number not implemented",
    0x03: "unit number not implemented", 0x04: "tariff number not implemented",
    0x05: "function not implemented", 0x06: "data class not implemented",
    0x07: "data size not implemented", 0x0B: "too many VIFEs", 0x0C: "illegal VIF group",
    0x0D: "illegal VIF exponent", 0x0E: "VIF/DIF mismatch", 0x0F: "unimplemented action",
    0x15: "no data available", 0x16: "data overflow", 0x17: "data underflow",
    0x18: "data error", 0x1C: "premature end of record",
}

# Combinable VIFE -> ("unit" suffix or None, descriptor or None).
VIFE_PER: Final[dict[int, str]] = {
    0x20: "/s", 0x21: "/min", 0x22: "/h", 0x23: "/d", 0x24: "/week", 0x25: "/month",
    0x26: "/year", 0x27: "/revolution", 0x2C: "/l", 0x2D: "/m3", 0x2E: "/kg", 0x2F: "/K",
    0x30: "/kWh", 0x31: "/GJ", 0x32: "/kW", 0x33: "/(K*l)", 0x34: "/V", 0x35: "/A",
    0x36: "*s", 0x37: "*s/V", 0x38: "*s/A",
}
VIFE_DESCRIPTORS: Final[dict[int, str]] = {
    0x28: "per input pulse 0", 0x29: "per input pulse 1", 0x2A: "per output pulse 0",
    0x2B: "per output pulse 1", 0x3A: "uncorrected", 0x3B: "forward", 0x3C: "backward",
    0x3D: "non-metric", 0x3E: "at base conditions", 0x3F: "OBIS declaration",
    0x40: "lower limit", 0x48: "upper limit", 0x41: "lower limit exceed count",
    0x49: "upper limit exceed count", 0x68: "during lower limit exceed",
    0x6C: "during upper limit exceed", 0x69: "leakage", 0x6D: "overflow",
    0x78: "additive correction 10^-3", 0x79: "additive correction 10^-2",
    0x7A: "additive correction 10^-1", 0x7B: "additive correction 10^0",
    0x7E: "future value",
}
# VIFEs that turn the record into a date/time "of" the quantity.
VIFE_DATE_OF: Final[dict[int, str]] = {
    0x39: "start of", 0x42: "begin of first lower limit exceed",
    0x43: "end of first lower limit exceed", 0x46: "begin of last lower limit exceed",
    0x47: "end of last lower limit exceed", 0x4A: "begin of first upper limit exceed",
    0x4B: "end of first upper limit exceed", 0x4E: "begin of last upper limit exceed",
    0x4F: "end of last upper limit exceed", 0x6A: "begin of first", 0x6B: "end of first",
    0x6E: "begin of last", 0x6F: "end of last",
}
VIFE_MULT_BASE = 0x70    # E111 0nnn: multiplicative correction 10^(nnn-6)
VIFE_MULT_1000 = 0x7D    # 10^3
VIFE_EXTENSION = 0x7C    # next VIFE is from another (extension) table
VIFE_MANUFACTURER = 0x7F  # the rest of the VIFEs (and the data) are manufacturer-specific

# --------------------------------------------------------------------------- device types (Table 3)

DEVICE_TYPES: Final[dict[int, str]] = {
    0x00: "other", 0x01: "oil", 0x02: "electricity", 0x03: "gas", 0x04: "heat (outlet)",
    0x05: "steam", 0x06: "warm water", 0x07: "water", 0x08: "heat cost allocator",
    0x09: "compressed air", 0x0A: "cooling (outlet)", 0x0B: "cooling (inlet)",
    0x0C: "heat (inlet)", 0x0D: "heat/cooling", 0x0E: "bus/system component",
    0x0F: "unknown", 0x10: "irrigation water", 0x11: "water data logger",
    0x12: "gas data logger", 0x13: "gas converter", 0x14: "calorific value",
    0x15: "hot water", 0x16: "cold water", 0x17: "dual register water", 0x18: "pressure",
    0x19: "A/D converter", 0x1A: "smoke detector", 0x1B: "room sensor", 0x1C: "gas detector",
    0x20: "breaker (electricity)", 0x21: "valve (gas or water)", 0x25: "customer unit",
    0x28: "waste water", 0x29: "garbage", 0x2A: "carbon dioxide",
    0x30: "service tool", 0x31: "communication controller", 0x32: "unidirectional repeater",
    0x33: "bidirectional repeater", 0x36: "radio converter (system side)",
    0x37: "radio converter (meter side)", 0x38: "wired adapter", 0xFF: "wildcard",
}


def device_type_name(code: int) -> str:
    return DEVICE_TYPES.get(code, f"reserved (0x{code:02X})")


# --------------------------------------------------------------------------- status byte (Table 6)

STATUS_APPLICATION: Final[dict[int, str | None]] = {
    0: None, 1: "application_busy", 2: "application_error", 3: "abnormal_condition",
}
STATUS_BITS: Final[tuple[tuple[int, str], ...]] = (
    (0x04, "battery_low"),        # "power low"
    (0x08, "permanent_error"),
    (0x10, "temporary_error"),
    (0x20, "manufacturer_1"),
    (0x40, "manufacturer_2"),
    (0x80, "manufacturer_3"),
)


def status_flags(status: int) -> list[str]:
    """The status byte as diagnostic flags; [] means all is well."""
    flags = []
    app = STATUS_APPLICATION[status & 0x03]
    if app:
        flags.append(app)
    flags.extend(name for bit, name in STATUS_BITS if status & bit)
    return flags


# --------------------------------------------------------------------------- CI fields (EN 13757-7 Table 2, -4)

CI_RSP_UD_LONG = 0x72       # APL with long TPL header (12 bytes)
CI_RSP_UD_NONE = 0x78       # APL without TPL header
CI_RSP_UD_SHORT = 0x7A      # APL with short TPL header (4 bytes)
CI_RSP_UD_LONG_MSB = 0x76   # rare, MSB-first data: unsupported
CI_COMPACT = 0x79           # Kamstrup/OMS compact frame: needs a format signature
CI_SELECT = 0x52            # wired: select slave by secondary address
CI_APPLICATION_ERROR = 0x70        # no TPL header (wired and wireless)
CI_APPLICATION_ERROR_SHORT = 0x6E  # short TPL header
CI_APPLICATION_ERROR_LONG = 0x6F   # long TPL header
CI_FIXED = 0x73             # wired: fixed data structure (EN 13757-3:2004 Annex), LSB first
CI_FIXED_MSB = 0x77         # wired: the same, most significant byte first
CI_COMPACT_LONG = 0x73      # wireless (EN 13757-7): compact frame, long TPL header
CI_COMPACT_SHORT = 0x7B     # wireless: compact frame, short TPL header
CI_FORMAT_NONE = 0x69       # format frame (the DIF/VIF bytes of a compact frame), no header
CI_FORMAT_SHORT = 0x6A
CI_FORMAT_LONG = 0x6B
CI_APPLICATION_RESET = 0x50
CI_ELL_SHORT = 0x8C         # CC ACC
CI_ELL_LONG = 0x8D          # CC ACC SN(4) [PayloadCRC(2) encrypted]
CI_ELL_SHORT_ADDR = 0x8E    # CC ACC M(2) A(6)
CI_ELL_LONG_ADDR = 0x8F     # CC ACC M(2) A(6) SN(4) [PayloadCRC(2)]
CI_AFL = 0x90               # authentication and fragmentation layer

ELL_HEADER_LEN: Final[dict[int, int]] = {CI_ELL_SHORT: 2, CI_ELL_LONG: 6, CI_ELL_SHORT_ADDR: 10,
                                          CI_ELL_LONG_ADDR: 14}

# Application error codes (EN 13757-3 Table "Codes for application errors"; libmbus words)
APPLICATION_ERRORS: Final[dict[int, str]] = {
    0: "unspecified error", 1: "unimplemented CI field", 2: "buffer too long, truncated",
    3: "too many records", 4: "premature end of record", 5: "more than 10 DIFEs",
    6: "more than 10 VIFEs", 7: "reserved", 8: "application too busy for handling readout "
    "request", 9: "too many readouts",
}

# --------------------------------------------------------------------------- security modes (EN 13757-7 Table 19)

SECURITY_MODES: Final[dict[int, str]] = {
    0: "none", 1: "manufacturer specific", 2: "DES-CBC, zero IV", 3: "DES-CBC, IV",
    4: "specific usage", 5: "AES-128-CBC, IV", 6: "reserved", 7: "AES-128-CBC, zero IV, KDF",
    8: "AES-128-CTR, CMAC", 9: "AES-128-GCM", 10: "AES-128-CCM", 13: "TLS",
}

# AFL message-control authentication type -> MAC length (OMS Vol. 2 Table 20)
AFL_MAC_LENGTH: Final[dict[int, int]] = {3: 2, 4: 4, 5: 8, 6: 12, 7: 16}


# --------------------------------------------------------------------------- manufacturer code (EN 13757-3 6.2.3)

@lru_cache(maxsize=4096)
def manufacturer_code(m: int) -> str:
    """The 15-bit manufacturer field as three letters ("KAM"); odd values stay readable."""
    chars = [((m >> 10) & 0x1F) + 64, ((m >> 5) & 0x1F) + 64, (m & 0x1F) + 64]
    return "".join(chr(c) if 65 <= c <= 90 else "?" for c in chars)


def manufacturer_value(code: str) -> int:
    """Inverse of manufacturer_code for three letters A-Z."""
    if len(code) != 3 or not code.isalpha() or not code.isupper():
        raise ValueError(f"a manufacturer code is three letters A-Z, got {code!r}")
    return ((ord(code[0]) - 64) << 10) | ((ord(code[1]) - 64) << 5) | (ord(code[2]) - 64)
