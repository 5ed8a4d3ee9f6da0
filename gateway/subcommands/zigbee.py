"""`gateway zigbee permit-join SECONDS -c CONFIG [--driver NAME]`: open the Zigbee network.

An installer pairs a new meter by opening the network for a minute or two. The command
takes the serial port of a ``zigbee`` driver from the config and talks to the XBee directly:
AT NJ=SECONDS, AT AC, and a Mgmt_Permit_Joining_req broadcast (what AT CB2 does, for a
chosen duration). The running gateway holds that port exclusively, so while it runs this
fails with a message saying so; the new device's Device_annce is then seen by the driver.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("zigbee", help="Zigbee network operations (permit-join)")
    cmds = p.add_subparsers(dest="zigbee_command", metavar="COMMAND")
    pj = cmds.add_parser("permit-join", help="let new devices join for SECONDS (0 closes)")
    pj.add_argument("seconds", metavar="SECONDS", type=int, help="0-254")
    pj.add_argument("-c", "--config", required=True, help="config file (YAML)")
    pj.add_argument("--driver", metavar="NAME", help="which zigbee driver (if several)")
    pj.add_argument("--timeout", type=float, default=5.0,
                    help="seconds to wait for each module answer (default 5)")
    pj.set_defaults(func=cmd_permit_join)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), EXIT_USAGE)[1])


def _pick_driver(cfg: Any, name: str | None) -> Any:
    zigbee = [d for d in cfg.drivers if d.type == "zigbee"]
    if name is not None:
        match = [d for d in zigbee if d.name == name]
        if not match:
            raise LookupError(f"no zigbee driver named {name!r} in the config (zigbee drivers: "
                              f"{', '.join(d.name for d in zigbee) or 'none'})")
        return match[0]
    if not zigbee:
        raise LookupError("the config has no driver of type zigbee")
    if len(zigbee) > 1:
        raise LookupError("the config has several zigbee drivers; choose one with --driver "
                          + "/".join(d.name for d in zigbee))
    return zigbee[0]


def cmd_permit_join(args: argparse.Namespace) -> int:
    from ..cli import load_or_report
    if not 0 <= args.seconds <= 254:
        print("error: SECONDS must be 0-254 (0 closes the network)", file=sys.stderr)
        return EXIT_USAGE
    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_USAGE
    try:
        drv = _pick_driver(cfg, args.driver)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import serial

    from ..drivers.serialport import SerialPortError, write_frame
    from ..drivers.zigbee import XBeeLink, XBeeLinkError, open_network, open_port
    opts = dict(drv.options["serial"])
    try:
        ser = open_port(opts)
    except SerialPortError as exc:
        busy = "lock" in str(exc).lower() or "busy" in str(exc).lower()
        print(f"error: {exc}" + ("\n(the running gateway holds this port: stop it, or use the "
                                  "console once it can forward this command)" if busy else ""),
              file=sys.stderr)
        return EXIT_FAILED
    try:
        ser.timeout = 0.05
        link = XBeeLink(ser, int(drv.options.get("api_mode", 2)) == 2, lambda f, c: None,
                        lambda data: write_frame(ser, data, opts))
        steps = open_network(link, args.seconds, int(time.time()) & 0xFF, args.timeout)
    except XBeeLinkError as exc:
        print(f"error: XBee on {opts['port']}: {exc} (API mode "
              f"{drv.options.get('api_mode', 2)}, {opts.get('baud', 9600)} baud?)",
              file=sys.stderr)
        return EXIT_FAILED
    except (serial.SerialException, OSError) as exc:
        print(f"error: serial port {opts['port']}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        ser.close()
    state = f"open for {args.seconds} s" if args.seconds else "closed"
    print(f"zigbee {drv.name}: network {state} ({'; '.join(steps)})")
    return EXIT_OK
