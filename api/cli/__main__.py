"""``python -m api.cli``: the ``gradq`` command."""

from api.cli import app

app()
