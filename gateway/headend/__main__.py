"""``python -m gateway.headend``: the same as the ``gateway-headend`` console script."""

import sys

from gateway.headend.cli import main

sys.exit(main())
