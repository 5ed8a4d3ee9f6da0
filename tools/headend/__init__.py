"""Development head-end tools: ``python -m tools.headend`` (the live verifier, now installed
as :mod:`gateway.headend`) and ``python -m tools.headend cmd`` (sign and send commands)."""

from gateway.headend.verifier import FeedResult, SeqRanges, Verifier

__all__ = ["FeedResult", "SeqRanges", "Verifier"]
