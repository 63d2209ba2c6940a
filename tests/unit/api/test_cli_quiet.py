"""``api.cli.quiet``: the library warnings silenced are those named, no others."""

from __future__ import annotations

import logging
import warnings

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from api.cli.quiet import RAY_TOKEN_LOGGER, quiet_libraries


def test_rays_token_notice_is_dropped_and_its_opposite_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_libraries()
    quiet_libraries()  # twice: one filter
    logger = logging.getLogger(RAY_TOKEN_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=RAY_TOKEN_LOGGER):
        logger.warning("Token authentication is enabled for this Ray cluster. Set …")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone …")
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "Token authentication is disabled for thi"
    ]


def test_starlette_deprecations_from_libraries_only() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn_explicit("old", StarletteDeprecationWarning, "x.py", 1, module="fastapi.x")
        warnings.warn_explicit("old", StarletteDeprecationWarning, "y.py", 1, module="mlflow")
        warnings.warn_explicit("ours", StarletteDeprecationWarning, "z.py", 1, module="api.main")
        warnings.warn_explicit("other", UserWarning, "w.py", 1, module="fastapi.w")
    assert sorted(str(w.message) for w in seen) == ["other", "ours"]
