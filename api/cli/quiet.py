"""Library warnings a gradq user cannot act on, silenced one by one (never all warnings):

- Ray's notice, at each start of a local Ray, that token authentication is on: it is, and
  should be (the opposite notice, that it is off, still shows);
- Starlette's deprecation warnings raised from inside FastAPI or MLflow (their use of a
  Starlette name that Starlette has renamed): gradq's own code is not silenced.
"""

from __future__ import annotations

import logging
import warnings

RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"
LIBRARIES = r"(fastapi|mlflow|starlette)(\..*)?$"


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_TOKEN_NOTICE)


def quiet_libraries() -> None:
    """Install the filters (idempotent)."""
    logger = logging.getLogger(RAY_TOKEN_LOGGER)
    if not any(isinstance(f, _DropNotice) for f in logger.filters):
        logger.addFilter(_DropNotice())
    try:
        from starlette.exceptions import StarletteDeprecationWarning
    except ImportError:  # an older Starlette: no such warnings
        return
    warnings.filterwarnings("ignore", category=StarletteDeprecationWarning, module=LIBRARIES)
