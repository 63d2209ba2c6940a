"""The compose deployment (docker/compose.yaml), checked without Docker.

No Docker engine runs where the tests do, and the compose specification's JSON schema is not
available offline, so these are explicit structural checks: every service can start (an image
or a build, a command), every ``GRADQ_*`` variable is a real setting and the ones each role
needs are set, healthchecks and ``depends_on`` conditions are where startup order matters,
and ``docker/.env.example`` defines every ``${VAR}`` the file uses and holds no secret.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.settings import Settings

DOCKER = Path(__file__).resolve().parents[3] / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; "$$" escapes a "$".
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "depends_on",
    "healthcheck",
    "restart",
    "profiles",
    "deploy",
    "shm_size",
    "user",
    "working_dir",
    "networks",
    "labels",
    "expose",
}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
GRADQ_SERVICES = ("api", "dispatcher", "ray-worker", "ray-worker-gpu")
RAY_SERVICES = ("ray-head", "ray-worker", "ray-worker-gpu", "dispatcher")
PLACEHOLDERS = {"", "change-me"}


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for n, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f".env.example:{n}: {line!r}"
        values[key] = value
    return values


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose also allows a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    assert isinstance(env, dict)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_words(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(w) for w in command]


def interpolated(text: str) -> list[tuple[str, str | None, str]]:
    return [(m[1], m[2] or None, m[3] or "") for m in INTERPOLATION.finditer(text)]


def substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        value = values.get(m[1], "")
        return value if value or not m[2] or "-" not in m[2] else m[3]

    return INTERPOLATION.sub(one, text).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_every_service_can_start(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "postgres",
        "mlflow",
        "mlflow-service-account",
        "ray-head",
        "ray-worker",
        "ray-worker-gpu",
        "dispatcher",
        "api",
    }
    assert set(services) == expected
    for name, service in services.items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: keys outside the compose spec's service keys: {unknown}"
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"
        assert service.get("command"), f"{name}: no command"
        if "build" in service:
            build = service["build"]
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["args"]["TORCH_VARIANT"] in ("${TORCH_VARIANT:-cpu}", "cpu", "cuda")


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                used.add(source)
    assert used == declared, f"used {used}, declared {declared}"
    assert {"pgdata", "mlartifacts"} <= declared


def test_gradq_variables_are_real_settings(services: dict[str, dict[str, Any]]) -> None:
    fields = {f"GRADQ_{name.upper()}" for name in Settings.model_fields}
    seen = 0
    for name, service in services.items():
        for key in environment(service):
            if key.startswith("GRADQ_"):
                seen += 1
                assert key in fields, f"{name}: {key} is not a field of api.settings.Settings"
    assert seen >= 10


def test_each_role_gets_the_settings_it_needs(services: dict[str, dict[str, Any]]) -> None:
    for name in GRADQ_SERVICES:
        env = environment(services[name])
        assert env.get("GRADQ_DATABASE_URL", "").startswith("postgresql+psycopg://"), name
        assert env["GRADQ_DATABASE_URL"].endswith("@postgres:5432/gradq"), name
        assert env.get("GRADQ_MLFLOW_TRACKING_URI") == "http://mlflow:5000", name
    assert environment(services["dispatcher"]).get("GRADQ_RAY_ADDRESS") == "ray-head:6379"
    api = environment(services["api"])
    assert api.get("GRADQ_AUTH") == "keys"
    # the dispatcher's workers name MLflow experiments and models for their tenant
    assert environment(services["dispatcher"]).get("GRADQ_AUTH") == "keys"
    # With the example's values substituted, the api's and dispatcher's settings validate.
    first_key = "gq_" + "k" * 40
    values = {
        **env_example(),
        "POSTGRES_PASSWORD": "pw",
        "RAY_AUTH_TOKEN": "t",
        "GRADQ_API_KEY": first_key,
    }
    for name in ("api", "dispatcher"):
        env = environment(services[name])
        kwargs = {
            k.removeprefix("GRADQ_").lower(): substitute(v, values)
            for k, v in env.items()
            if k.startswith("GRADQ_")
        }
        settings = Settings(**kwargs)
        assert settings.database_url.startswith("postgresql+psycopg://gradq:pw@postgres")
        if name == "api":  # the deployment's first key comes from docker/.env
            assert settings.bootstrap_api_key is not None
            assert settings.bootstrap_api_key.get_secret_value() == first_key
    assert Settings(**{"host": "0.0.0.0", "auth": "keys"}).bind_refusal(insecure=False) is None


def test_commands(services: dict[str, dict[str, Any]]) -> None:
    api = " ".join(command_words(services["api"]))
    assert api.index("gradq db upgrade") < api.index("gradq api --host 0.0.0.0 --port 8000")
    assert command_words(services["dispatcher"]) == ["gradq", "dispatcher"]
    head = command_words(services["ray-head"])
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    assert head[head.index("--num-cpus") + 1] == "0", "jobs must go to the workers"
    assert head[head.index("--port") + 1] == "6379"
    assert head[head.index("--dashboard-host") + 1] == "0.0.0.0"
    for name in ("ray-worker", "ray-worker-gpu"):
        words = command_words(services[name])
        assert words[:2] == ["ray", "start"] and "--block" in words, name
        assert words[words.index("--address") + 1] == "ray-head:6379", name
    mlflow = command_words(services["mlflow"])
    assert mlflow[:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert mlflow[mlflow.index("--backend-store-uri") + 1].endswith("@postgres:5432/mlflow")
    assert "mlflow:5000" in mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    assert "mlartifacts:/mlartifacts" in services["mlflow"]["volumes"]


def test_ray_token_authentication_is_on(services: dict[str, dict[str, Any]]) -> None:
    for name in RAY_SERVICES:
        env = environment(services[name])
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert [v for v, _, _ in interpolated(env.get("RAY_AUTH_TOKEN", ""))] == ["RAY_AUTH_TOKEN"]
        # required: compose refuses to start without it (no empty token)
        assert interpolated(env["RAY_AUTH_TOKEN"])[0][1] == ":?", name
    assert "RAY_AUTH_TOKEN" not in environment(services["api"]), "the api is no Ray driver"


def test_postgres_creates_both_databases(services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]
    assert pg["image"] == "postgres:15"
    assert environment(pg)["POSTGRES_DB"] == "gradq"
    init = [v for v in pg["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert len(init) == 1
    sql = (COMPOSE.parent / init[0].split(":")[0]).read_text()
    assert re.search(r"^CREATE DATABASE mlflow;", sql, re.MULTILINE)
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_healthchecks_and_startup_order(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "mlflow", "ray-head", "api"):
        check = services[name]["healthcheck"]
        assert not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("ray-worker", "ray-worker-gpu", "dispatcher", "mlflow-service-account"):
        assert services[name]["healthcheck"] == {"disable": True}, name  # no HTTP to probe
    account = "mlflow-service-account"  # one-shot: gradq's services wait for it to finish
    needs = {
        "mlflow": {"postgres"},
        account: {"mlflow"},
        "ray-worker": {"ray-head", "mlflow", account},
        "ray-worker-gpu": {"ray-head", "mlflow", account},
        "dispatcher": {"postgres", "mlflow", account, "ray-head"},
        "api": {"postgres", "mlflow", account, "ray-head"},
    }
    for name, required in needs.items():
        depends = services[name]["depends_on"]
        assert set(depends) == required, name
        for dep, how in depends.items():
            assert how["condition"] in DEPENDS_CONDITIONS
            if dep == account:
                assert how["condition"] == "service_completed_successfully", name
                assert services[dep]["restart"] == "no"
                continue
            assert how["condition"] == "service_healthy", f"{name} -> {dep}"
            assert "healthcheck" in services[dep] and not services[dep]["healthcheck"].get(
                "disable"
            )


def test_gpu_worker_is_a_profile_with_devices(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name, service in services.items():
        assert ("profiles" in service) == (name == "ray-worker-gpu"), name


def test_published_ports_bind_loopback_by_default(services: dict[str, dict[str, Any]]) -> None:
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"api", "mlflow", "ray-head"}
    values = env_example()
    targets = set()
    for name, ports in published.items():
        for port in ports:
            address, _, target = substitute(port, values).rpartition(":")
            host = address.split(":")[0]
            assert host == "127.0.0.1", f"{name}: {port} binds {host}"
            targets.add(int(target))
    assert targets == {8000, 5000, 8265}
    assert "ray-worker" not in published, "a scaled service cannot publish a fixed port"


BIND_SETTINGS = {
    "api": "API_BIND_ADDRESS",
    "mlflow": "MLFLOW_BIND_ADDRESS",
    "ray-head": "RAY_DASHBOARD_BIND_ADDRESS",
}


def bound_hosts(services: dict[str, dict[str, Any]], values: dict[str, str]) -> dict[str, str]:
    """The host address each published port binds, with ``values`` substituted."""
    hosts = {}
    for name, service in services.items():
        for port in service.get("ports") or []:
            hosts[name] = substitute(port, values).rpartition(":")[0].split(":")[0]
    return hosts


def test_each_port_has_its_own_bind_address(services: dict[str, dict[str, Any]]) -> None:
    """Opening the API to tenants (API_BIND_ADDRESS) leaves MLflow and the Ray dashboard on
    loopback: each published port binds an address of its own, 127.0.0.1 unless set."""
    defaults = env_example()
    assert {defaults[v] for v in BIND_SETTINGS.values()} == {"127.0.0.1"}
    assert "BIND_ADDRESS" not in defaults
    for name, variable in BIND_SETTINGS.items():
        for port in services[name]["ports"]:
            assert interpolated(port)[0] == (variable, ":-", "127.0.0.1"), f"{name}: {port}"
        opened = bound_hosts(services, {**defaults, variable: "0.0.0.0"})
        assert opened == {n: "0.0.0.0" if n == name else "127.0.0.1" for n in BIND_SETTINGS}


def test_mlflow_asks_for_a_user_and_gradq_signs_in_as_its_own(
    services: dict[str, dict[str, Any]],
) -> None:
    """MLflow runs its basic-auth app (docker/mlflow-auth.ini), with an admin password that
    compose requires; gradq's services send their own account's credentials, which the
    one-shot mlflow-service-account service makes, signed in as the admin."""
    mlflow = services["mlflow"]
    words = command_words(mlflow)
    assert words[words.index("--app-name") + 1] == "basic-auth"
    env = environment(mlflow)
    mounted = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"]}
    config = (COMPOSE.parent / mounted[env["MLFLOW_AUTH_CONFIG_PATH"]]).read_text()
    assert re.search(r"^default_permission = NO_PERMISSIONS$", config, re.MULTILINE)
    cache = re.search(r"^auth_cache_ttl_seconds = (\d+)$", config, re.MULTILINE)
    assert cache and int(cache[1]) > 0, "every request would pay a password hash check"
    database = re.search(r"^database_uri = sqlite:///(/[^/]+)/", config, re.MULTILINE)
    assert database and database[1] in mounted and database[1] != "/mlartifacts"
    assert mounted[database[1]] in (load_compose().get("volumes") or {})  # kept on restart
    assert interpolated(env["MLFLOW_AUTH_ADMIN_PASSWORD"])[0][:2] == ("MLFLOW_ADMIN_PASSWORD", ":?")
    assert interpolated(env["MLFLOW_FLASK_SERVER_SECRET_KEY"])[0][:2] == ("MLFLOW_SECRET_KEY", ":?")

    maker = services["mlflow-service-account"]
    made = environment(maker)
    script = {v.split(":")[1]: v.split(":")[0] for v in maker["volumes"]}[command_words(maker)[1]]
    assert "AuthServiceClient" in (COMPOSE.parent / script).read_text()
    assert made["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert made["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    for name in GRADQ_SERVICES:
        gradq = environment(services[name])
        assert gradq["MLFLOW_TRACKING_USERNAME"] == made["SERVICE_ACCOUNT_USERNAME"], name
        assert gradq["MLFLOW_TRACKING_PASSWORD"] == made["SERVICE_ACCOUNT_PASSWORD"], name
        assert interpolated(gradq["MLFLOW_TRACKING_PASSWORD"])[0][:2] == (
            "MLFLOW_GRADQ_PASSWORD",
            ":?",
        ), name
    defaults = env_example()
    assert substitute(made["SERVICE_ACCOUNT_USERNAME"], defaults) != substitute(
        env["MLFLOW_AUTH_ADMIN_USERNAME"], defaults
    ), "gradq's account is not the operators' admin"


def test_env_example_covers_every_variable_and_no_secret() -> None:
    text = COMPOSE.read_text()
    referenced = {name for name, _, _ in interpolated(text)}
    values = env_example()
    assert referenced, "compose.yaml references no variables"
    missing = referenced - set(values)
    assert not missing, f"docker/.env.example lacks {sorted(missing)}"
    required = {name for name, op, _ in interpolated(text) if op in (":?", "?")}
    assert {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "MLFLOW_ADMIN_PASSWORD",
            "MLFLOW_GRADQ_PASSWORD", "MLFLOW_SECRET_KEY"} <= required  # fmt: skip
    for name in required | {"GRADQ_API_KEY"}:
        assert values.get(name, "") in PLACEHOLDERS, f"{name} in .env.example looks like a secret"
    for key, value in values.items():
        if re.search(r"PASSWORD|TOKEN|SECRET|KEY", key):
            assert value in PLACEHOLDERS, f"{key} in .env.example is not a placeholder"
        # a database URL with a password inline would be a secret too
        assert not re.search(r"://[^:/@]+:[^@]+@", value), key


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.MULTILINE)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    pins = set(re.findall(r"torch==([\d.]+)", text.replace("${TORCH_VERSION}", "TV")))
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    version = re.search(r"ARG TORCH_VERSION=([\d.]+)", text)
    assert version and f'"torch=={version[1]}"' in pyproject and not pins - {"TV"}
    # dependencies are installed from pyproject.toml before the code is copied (cached layer)
    assert (
        text.index("COPY pyproject.toml") < text.index("pip install -r") < text.index("COPY core")
    )
    assert re.search(r"^USER gradq$", text, re.MULTILINE)
    assert text.index("USER gradq") > text.index("pip install --no-deps .")
    assert re.search(r"^HEALTHCHECK .*\n?.*urllib\.request", text, re.MULTILINE)
    assert "/healthz" in text


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """Debian's docker-compose (installed by .ci/run) validates the file with .env.example."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    env = tmp_path / "compose.env"
    env.write_text(ENV_EXAMPLE.read_text())
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "--env-file", str(env), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    names = subprocess.run(
        [binary, "-f", str(COMPOSE), "--env-file", str(env), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert {"postgres", "mlflow", "mlflow-service-account", "ray-head", "ray-worker",
            "dispatcher", "api"} <= set(names)  # fmt: skip
