"""Smart-meter concentrator runtime: port -> codec -> driver -> edge -> store -> uplink."""

__version__ = "0.1.0"
