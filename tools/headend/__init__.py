"""Reference head-end: verifies signed envelopes and proves nothing was lost or forged.

Run it with ``python -m tools.headend --help``.
"""

from tools.headend.verifier import FeedResult, SeqRanges, Verifier

__all__ = ["FeedResult", "SeqRanges", "Verifier"]
