"""Suite-wide settings.

Hypothesis explores new random cases on every developer run (that is how it finds bugs), but
CI (``CI=true``) replays a fixed, derandomised set so that a submission's result depends only
on its code.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
