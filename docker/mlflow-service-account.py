"""gradq's MLflow account in the compose deployment, made by the one-shot
``mlflow-service-account`` service once MLflow's basic-auth app answers.

Signs in as MLflow's admin (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, from
``MLFLOW_ADMIN_*`` in docker/.env) and makes the user ``SERVICE_ACCOUNT_USERNAME`` with the
password ``SERVICE_ACCOUNT_PASSWORD`` (``MLFLOW_GRADQ_*`` in docker/.env), or sets that
password when the user exists (a rotated secret takes effect on the next ``up``).

The account is an MLflow admin: gradq's services write every tenant's runs, data sets and
registered models, also in experiments made before authentication was on; they hold the
PostgreSQL password of MLflow's store anyway.
"""

from __future__ import annotations

import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


def main() -> int:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    username = os.environ["SERVICE_ACCOUNT_USERNAME"]
    password = os.environ["SERVICE_ACCOUNT_PASSWORD"]
    if not username or not password:
        print("SERVICE_ACCOUNT_USERNAME and SERVICE_ACCOUNT_PASSWORD must be set", file=sys.stderr)
        return 2
    if username == os.environ.get("MLFLOW_TRACKING_USERNAME"):
        print("gradq's MLflow account must not be the admin account", file=sys.stderr)
        return 2
    client = AuthServiceClient(uri)
    try:
        client.get_user(username)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(username, password)
        print(f"created MLflow user {username}")
    else:
        client.update_user_password(username, password)
        print(f"set the password of MLflow user {username}")
    client.update_user_admin(username, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
