"""The XBee link: API frames over a serial port, frame ids, AT commands with a deadline.

Why apart from the driver: the ``gateway zigbee permit-join`` command talks to the module
the same way the driver does (AT NJ, AT AC, a ZDO broadcast) without a driver thread, and
the driver's ZCL/ZDO logic has no business knowing how an API frame is escaped or how a
frame id is matched to its AT response. The link never reads the port on its own: the
driver hands it the bytes the bus skeleton read (:meth:`XBeeLink.feed`); only a blocking
:meth:`XBeeLink.at` pumps the port itself until its answer or its deadline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..protocols import xbee, zdo

OUR_ENDPOINT = 0x01          # the coordinator endpoint our ZCL requests come from
BROADCAST_ROUTERS16 = 0xFFFC  # all routers and the coordinator


def open_port(opts: Mapping[str, Any]) -> Any:
    from .serialport import open_serial
    return open_serial(opts)


class XBeeLinkError(Exception):
    """The module did not answer (or refused) an AT command: wrong AP mode, baud, or port."""


@dataclass
class _AtWait:
    command: str
    callback: Callable[[xbee.ATCommandResponse | None], None] | None = None
    response: xbee.ATCommandResponse | None = None
    done: bool = False


class XBeeLink:
    """A serial port + API frame codec + frame-id table: what the driver and the
    ``gateway zigbee`` command share. ``on_frame(frame, context)`` gets every frame that is
    not the answer to an AT command sent through :meth:`at`/:meth:`at_async`; context is
    what was allocated with the frame id of a Transmit Status, else None."""

    def __init__(self, ser: Any, escaped: bool,
                 on_frame: Callable[[Any, Any], None], write: Callable[[bytes], None],
                 on_decode_error: Callable[[bytes, Exception], None] | None = None) -> None:
        self.ser = ser
        self.escaped = escaped
        self.on_frame = on_frame
        self.on_decode_error = on_decode_error
        self._write = write
        self.decoder = xbee.FrameDecoder(escaped=escaped)
        self.ids = xbee.FrameIdAllocator()

    def send(self, frame: xbee.Frame) -> None:
        self._write(xbee.encode(frame, self.escaped))

    def pump(self) -> bool:
        """Read what the port has (waiting at most its read timeout); dispatch every frame.
        True if any byte came in."""
        data = self.ser.read(max(1, self.ser.in_waiting))
        if not data:
            return False
        self.feed(bytes(data))
        return True

    def feed(self, data: bytes) -> None:
        """Bytes read from the port: decode and dispatch every complete frame."""
        self.decoder.receive_data(data)
        for _ in range(len(data) + 4096):  # each pass consumes a frame, or a byte at least
            try:
                ev = self.decoder.next_event()
            except Exception as exc:  # noqa: BLE001 - a codec bug must not stop the link
                raw = self.decoder.pending()
                self.decoder.skip(1)
                if self.on_decode_error is not None:
                    self.on_decode_error(raw, exc)
                continue
            if ev is xbee.NEED_DATA:
                return
            self._dispatch(ev)

    def _dispatch(self, ev: Any) -> None:
        ctx = None
        if isinstance(ev, (xbee.ATCommandResponse, xbee.TransmitStatus)) and ev.frame_id:
            ctx = self.ids.resolve(ev.frame_id)
            if isinstance(ctx, _AtWait):
                ctx.response, ctx.done = ev, True  # type: ignore[assignment]
                if ctx.callback:
                    ctx.callback(ev)  # type: ignore[arg-type]
                return
        self.on_frame(ev, ctx)

    def at_async(self, command: str, parameter: bytes, deadline: float,
                 callback: Callable[[xbee.ATCommandResponse | None], None] | None = None
                 ) -> _AtWait:
        wait = _AtWait(command, callback)
        fid = self.ids.allocate(wait, deadline)
        self.send(xbee.ATCommand(fid, command, parameter))
        return wait

    def at(self, command: str, parameter: bytes = b"", timeout: float = 3.0,
           stopping: threading.Event | None = None) -> xbee.ATCommandResponse:
        """Send an AT command and pump until its answer; XBeeLinkError on timeout/error."""
        deadline = time.monotonic() + timeout
        wait = self.at_async(command, parameter, deadline)
        while not wait.done:
            if time.monotonic() >= deadline or (stopping is not None and stopping.is_set()):
                self.expire(time.monotonic() + timeout)
                raise XBeeLinkError(f"no answer to AT {command} within {timeout:g} s")
            self.pump()
        resp = wait.response
        assert resp is not None
        if resp.status != 0:
            raise XBeeLinkError(f"AT {command} refused: "
                                f"{xbee.AT_STATUS.get(resp.status, resp.status)}")
        return resp

    def expire(self, now: float) -> list[tuple[int, Any]]:
        """Drop expired frame ids; AT callbacks get None; returns the other expired contexts."""
        others = []
        for fid, ctx in self.ids.expire(now):
            if isinstance(ctx, _AtWait):
                ctx.done = True
                if ctx.callback:
                    ctx.callback(None)
            else:
                others.append((fid, ctx))
        return others


def open_network(link: XBeeLink, seconds: int, zdo_seq: int, timeout: float,
                 stopping: threading.Event | None = None) -> list[str]:
    """Permit joining for ``seconds`` (0 closes): AT NJ + AC on the coordinator, then a
    Mgmt_Permit_Joining_req broadcast so routers open too (what AT CB2 does for 60 s).
    Returns the steps done, for the operator."""
    if not 0 <= seconds <= 254:
        raise ValueError("permit-join seconds must be 0..254 (255 would never close)")
    link.at("NJ", bytes((seconds,)), timeout, stopping)
    link.at("AC", b"", timeout, stopping)
    msg = zdo.PermitJoiningRequest(zdo_seq, seconds, 1)
    link.send(xbee.ExplicitAddressingCommand(
        0, xbee.BROADCAST64, BROADCAST_ROUTERS16, zdo.ZDO_ENDPOINT, zdo.ZDO_ENDPOINT,
        zdo.MGMT_PERMIT_JOINING_REQ, zdo.ZDO_PROFILE, 0, 0, msg.serialize()))
    return [f"AT NJ={seconds}", "AT AC", f"Mgmt_Permit_Joining_req({seconds} s) broadcast"]
