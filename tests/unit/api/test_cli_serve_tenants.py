"""``gradq serve`` / ``gradq dispatcher``: the workers name MLflow experiments and models for
their tenant exactly when API keys are on."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.cli.serve import _dispatcher
from api.settings import Settings


@pytest.mark.parametrize(("auth", "scoped"), [("keys", True), ("none", False)])
def test_the_workers_scope_names_by_tenant_when_api_keys_are_on(
    auth: str, scoped: bool, tmp_path: Path
) -> None:
    settings = Settings(auth=auth, database_url=f"sqlite:///{tmp_path}/gradq.db")  # type: ignore[arg-type]
    assert _dispatcher(settings).config.worker.tenant_names is scoped
