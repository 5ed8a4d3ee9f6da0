"""Moved to :mod:`gateway.headend.client` (installed with the package); kept for old imports."""

from gateway.headend.client import *  # noqa: F401,F403
from gateway.headend.client import (  # noqa: F401
    DEFAULT_TOPIC, EXIT_CONFIG, EXIT_NEVER_CONNECTED, EXIT_OK, Headend, HeadendOptions,
    default_client_id, human_summary, load_public_key, tls_context)
