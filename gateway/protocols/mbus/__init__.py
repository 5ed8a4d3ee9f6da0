"""M-Bus family codecs, sans-I/O: EN 13757-3 records, EN 13757-2 wired frames,
EN 13757-4 wireless frames with EN 13757-7/OMS security, and the iM871A and AMB8465 dongle
framings. Nothing in this package touches a port, a clock or a thread."""
