"""Fleet management: signed downlink commands, signed OTA updates into A/B slots with
automatic rollback, board profiles and the systemd watchdog.

Everything that can brick a gateway or let someone in is verified before it is acted on:
commands and release manifests are COSE_Sign1/Ed25519 signed, sequenced and expiring; an
update only becomes permanent after the new release has proved itself healthy.
"""
