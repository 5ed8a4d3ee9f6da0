"""The serial port and RS-485 tables shared by the bus drivers' options and board profiles."""

from __future__ import annotations

from typing import Any

from .checks import boolean, integer, mapping, one_of, one_of_ints, text
from .schema import Check, FieldSpec, Schema


def _check_serial_port(v: str) -> None:
    # Absolute, and not checked for existence: a USB adapter may appear after start-up.
    # Not resolved against the config's directory either: "ttyUSB0" is a mistake, not a file.
    if "\0" in v or not v.startswith("/"):
        raise ValueError()


def _parity(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError()
    if v.upper() not in ("N", "E", "O"):
        raise ValueError()
    return v.upper()


RS485_SCHEMA = Schema((
    FieldSpec("mode", one_of("auto", "kernel", "rts"), "auto",
              help="who switches the transmitter: auto (the adapter, by itself), kernel (the "
                   "UART driver's RS-485 mode) or rts (the driver toggles RTS around writes)"),
    FieldSpec("rts_level_for_tx", boolean(), True, help="RTS level while transmitting"),
    FieldSpec("delay_before_tx_ms", integer(0, 100), 0, help="delay after RTS before sending"),
    FieldSpec("delay_before_rx_ms", integer(0, 100), 0, help="delay after sending before RTS "
                                                             "is released"),
), help="RS-485 half-duplex settings")

SERIAL_SCHEMA = Schema((
    FieldSpec("port", text("an absolute serial device path such as /dev/ttyUSB0",
                           validate=_check_serial_port),
              help="serial device, e.g. /dev/serial/by-id/usb-FTDI_...; it need not exist yet"),
    FieldSpec("baud", one_of_ints(300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600,
                                  115200, 230400), 9600, help="baud rate"),
    FieldSpec("bytesize", one_of_ints(7, 8), 8, help="data bits"),
    FieldSpec("parity", Check('one of "N", "E", "O"', _parity, as_text=True), "N",
              help="parity: N (none), E (even) or O (odd)"),
    FieldSpec("stopbits", one_of_ints(1, 2), 1, help="stop bits"),
    FieldSpec("rs485", mapping(RS485_SCHEMA), None,
              help="RS-485 half-duplex settings; omit for RS-232 or a USB adapter that "
                   "switches by itself"),
    FieldSpec("timeout_ms", integer(10, 60000), 1000, help="read timeout"),
), help="a serial port; embed as FieldSpec('serial', mapping(SERIAL_SCHEMA))")
