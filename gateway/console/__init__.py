"""``gateway console``: the field technician's shell, attached to the running gateway through
its control socket (see :mod:`gateway.control`). Works on an 80x24 serial terminal: plain
ASCII, no curses, colour only on a tty and never with NO_COLOR, readline where available."""
