"""The runtime's local control channel: a Unix-domain socket the field-tech console talks to.

``protocol`` (framing, versioning), ``server`` (the socket, one thread per console, peer
credentials), ``audit`` (who changed what), ``monitor`` (what the runtime has seen, for
``meters``/``tail``), ``views`` and ``handlers`` (what each command answers), ``reload``
(which drivers a new config changes).
"""
