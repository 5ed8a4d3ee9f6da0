"""Open a pyserial port from a driver's validated ``serial:`` options.

Only this module (and the drivers that own a port) touches pyserial; codecs never do.
RS-485 direction control: ``auto`` (the adapter switches by itself: nothing to do),
``kernel`` (the UART driver toggles RTS: pyserial's ``rs485_mode``), ``rts`` (we toggle RTS
around each write: for UARTs without kernel support).
"""

from __future__ import annotations

import termios
import time
from typing import Any, Mapping

import serial
import serial.rs485

PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialPortError(Exception):
    """The port cannot be opened or configured; the message says which and why."""


def open_serial(opts: Mapping[str, Any], *, baud: int | None = None,
                timeout_s: float | None = None) -> serial.Serial:
    port = str(opts["port"])
    try:
        ser = serial.Serial(
            port=port,
            baudrate=int(baud or opts.get("baud", 9600)),
            bytesize=int(opts.get("bytesize", 8)),
            parity=PARITY[str(opts.get("parity", "N"))],
            stopbits=int(opts.get("stopbits", 1)),
            timeout=timeout_s if timeout_s is not None else int(opts.get("timeout_ms", 1000)) / 1000,
            write_timeout=5,
            exclusive=True,
        )
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        # termios.error is not an OSError: a UART (or pty) refusing a setting lands here
        raise SerialPortError(f"cannot open serial port {port}: {exc}") from exc
    rs485 = opts.get("rs485") or {}
    if rs485.get("mode") == "kernel":
        try:
            ser.rs485_mode = serial.rs485.RS485Settings(
                rts_level_for_tx=bool(rs485.get("rts_level_for_tx", True)),
                rts_level_for_rx=not bool(rs485.get("rts_level_for_tx", True)),
                delay_before_tx=int(rs485.get("delay_before_tx_ms", 0)) / 1000 or None,
                delay_before_rx=int(rs485.get("delay_before_rx_ms", 0)) / 1000 or None)
        except (ValueError, OSError, serial.SerialException) as exc:
            ser.close()
            raise SerialPortError(f"{port}: kernel RS-485 mode not supported by this UART "
                                  f"({exc}); use rs485.mode: rts or auto") from exc
    return ser


def write_frame(ser: serial.Serial, data: bytes, opts: Mapping[str, Any]) -> None:
    """Write one frame, toggling RTS around it when rs485.mode is 'rts'."""
    rs485 = opts.get("rs485") or {}
    if rs485.get("mode") == "rts":
        tx_level = bool(rs485.get("rts_level_for_tx", True))
        ser.rts = tx_level
        if rs485.get("delay_before_tx_ms"):
            time.sleep(int(rs485["delay_before_tx_ms"]) / 1000)
        ser.write(data)
        ser.flush()
        if rs485.get("delay_before_rx_ms"):
            time.sleep(int(rs485["delay_before_rx_ms"]) / 1000)
        ser.rts = not tx_level
    else:
        ser.write(data)
        ser.flush()

