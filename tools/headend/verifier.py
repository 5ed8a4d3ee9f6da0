"""Moved to :mod:`gateway.headend.verifier` (installed with the package); kept for old imports."""

from gateway.headend.verifier import *  # noqa: F401,F403
from gateway.headend.verifier import COUNTERS, FeedResult, SeqRanges, Verifier, digest, missing  # noqa: F401
