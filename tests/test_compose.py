"""docker-compose.yaml, checked without Docker so it cannot rot.

The stack is never started here (these machines cannot run containers), so this suite checks
what can be checked from the files alone: the services and their commands, healthchecks and
start-up order, the project folders mounted into every Airflow container, the variables
against .env.example, the IMAGEINDEX_* settings against the library, the queues and pools of
config/registry.compose.yaml against the workers and airflow-init, the shell and Python that
airflow-init and SeaweedFS run (syntax; and airflow-init for real: its connections file is loaded
by Airflow, and the whole script runs on a SQLite Airflow against a real SeaweedFS), and that no
secret is written down.
Variables are substituted by this suite's own ``interpolate()``; compose-go, the loader that the
docker compose CLI is built on (built from tests/composego with the Go toolchain), loads the file
for real too: it validates it against the Compose schema, and its interpolation must agree with
``interpolate()`` on every service's environment, command, entrypoint, healthcheck and image.
Where a Compose CLI exists, ``docker compose config`` validates the file as well.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
REGISTRY = ROOT / "config" / "registry.compose.yaml"
#: Airflow's settings: every Airflow service's env_file, and read by tests/integration/test_celery.py.
AIRFLOW_ENV = ROOT / "docker" / "airflow.env"
CONFIG_PY = ROOT / "include" / "imageindex" / "config.py"

#: Airflow components and the `airflow` sub-command each runs.
AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
#: Celery workers and the queues each must listen on.
WORKER_QUEUES = {
    "airflow-worker-cpu": {"default", "preprocess"},
    "airflow-worker-gpu": {"models"},
}
AIRFLOW_SERVICES = {*AIRFLOW_COMMANDS, *WORKER_QUEUES, "airflow-init"}
BACKING_SERVICES = {"postgres", "redis", "opensearch", "seaweedfs"}
POOLS = {"dashscope", "imageindex_upsert"}
MOUNTS = {
    "./dags": "/opt/airflow/dags",
    "./plugins": "/opt/airflow/plugins",
    "./include": "/opt/airflow/include",
    "./config": "/opt/airflow/config",
}
#: Environment names whose values are secrets: only ever ${VAR} references.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)|REDISCLI_AUTH")
#: Secrets the stack runs without (everything else secret is `${VAR:?…}`, required).
OPTIONAL_SECRETS = {"DASHSCOPE_API_KEY"}

_REF = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(KeyError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """This suite's copy of Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d},
    ${VAR:?e}, ${VAR?e}, ${VAR:+a}, ${VAR+a}. Checked against compose-go below."""

    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value
        if op in (":-", "-"):
            missing = unset_or_empty if op == ":-" else value is None
            return arg if missing else value
        if op in (":?", "?"):
            missing = unset_or_empty if op == ":?" else value is None
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            present = not unset_or_empty if op == ":+" else value is not None
            return arg if present else ""
        return value or ""

    return _REF.sub(sub, text)


def references(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every variable reference in ``text``."""
    return [
        (m.group("braced") or m.group("named"), m.group("op"), m.group("arg") or "")
        for m in _REF.finditer(text)
        if not m.group("escaped")
    ]


def walk_strings(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, (*path, str(i)))
    elif isinstance(node, str):
        yield path, node


def resolve(node, env):
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: '{line}' is not NAME=value"
        assert name not in out, f"{path.name}: {name} is listed twice"
        out[name] = value
    return out


def as_mapping(env) -> dict[str, str]:
    """A service's environment, list or mapping form, as a dict of strings."""
    if env is None:
        return {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_words(cmd) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def queues_of(cmd) -> set[str]:
    words = command_words(cmd)
    for i, w in enumerate(words):
        if w in ("--queues", "-q"):
            return set(words[i + 1].split(","))
        if w.startswith("--queues="):
            return set(w.split("=", 1)[1].split(","))
    return {"default"}


def heredoc(script: str, marker: str) -> str:
    m = re.search(rf"<<'{marker}'\n(.*?)\n{marker}\n", script, re.S)
    assert m, f"airflow-init has no <<'{marker}' heredoc"
    return m.group(1)


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    data = yaml.safe_load(raw)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def filled_env(example_env) -> dict[str, str]:
    """.env.example with a made-up value for every secret left empty there."""
    env = dict(example_env)
    for name, value in env.items():
        if not value and SECRET_NAME.search(name) and name not in OPTIONAL_SECRETS:
            env[name] = f"test-{name.lower().replace('_', '-')}-Aa1!"
    return env


@pytest.fixture(scope="module")
def resolved(services, filled_env) -> dict:
    return resolve(services, filled_env)


@pytest.fixture(scope="module")
def init_script(resolved) -> str:
    cmd = resolved["airflow-init"]["command"]
    assert resolved["airflow-init"].get("entrypoint") in ("/bin/bash", ["/bin/bash"])
    assert cmd[0] == "-c"
    return cmd[1]


# ------------------------------------------------------------------------------- services


def test_required_services_present(services):
    missing = (AIRFLOW_SERVICES | BACKING_SERVICES) - set(services)
    assert not missing, f"docker-compose.yaml lacks services {sorted(missing)}"


def test_backing_service_images(services):
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert re.fullmatch(
        r"opensearchproject/opensearch:2\.\d+\.\d+", services["opensearch"]["image"]
    )
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    assert ":latest" not in json.dumps(services), "pin image tags"


def test_airflow_services_run_our_image(services, resolved):
    images = set()
    for name in AIRFLOW_SERVICES:
        svc = resolved[name]
        build = svc.get("build")
        assert isinstance(build, dict), f"{name}: no build section"
        assert build.get("context") == "."
        assert build.get("dockerfile") == "docker/Dockerfile"
        assert (ROOT / build["dockerfile"]).is_file()
        images.add(svc["image"])
    assert len(images) == 1, f"Airflow services must share one image, got {images}"


def test_dockerfile(services):
    text = DOCKERFILE.read_text(encoding="utf-8")
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    airflow_pin = re.search(r"^apache-airflow==(\S+)$", requirements, re.M).group(1)
    assert re.search(
        rf"^ARG AIRFLOW_IMAGE=apache/airflow:{re.escape(airflow_pin)}-python3\.11$", text, re.M
    ), f"the base image must be apache/airflow:{airflow_pin}-python3.11"
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\}$", text, re.M)
    # torch from the PyTorch CPU index, before requirements.txt, so pip keeps the CPU build.
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    torch_at = text.index('--index-url "${TORCH_INDEX_URL}"')
    req_at = text.index("-r /opt/imageindex/requirements.txt")
    assert torch_at < req_at
    assert "'^torch=='" in text and re.search(r"^torch==", requirements, re.M)
    foolbox = re.search(r"foolbox==(\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"--no-deps foolbox=={foolbox}" in text, "foolbox: the Makefile's version, --no-deps"
    # Editable from the folder compose mounts ./include over.
    assert "COPY --chown=airflow:0 include/ /opt/airflow/include/" in text
    assert "pip install --no-cache-dir --no-deps -e /opt/airflow" in text
    assert re.search(r"^USER airflow$", text, re.M)
    # The build context is an allow-list: never .venv/ or var/.
    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "docker/Dockerfile.dockerignore must start by ignoring everything"
    for needed in ("requirements.txt", "pyproject.toml", "README.md", "include/"):
        assert f"!{needed}" in ignore
    for copied in re.findall(r"^COPY --chown=\S+ (.+) \S+$", text, re.M):
        for src in copied.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_airflow_commands(services):
    for name, sub in AIRFLOW_COMMANDS.items():
        assert command_words(services[name]["command"]) == [sub], name


def test_workers_listen_on_their_queues(services):
    for name, queues in WORKER_QUEUES.items():
        words = command_words(services[name]["command"])
        assert words[:2] == ["celery", "worker"], name
        assert queues_of(words) == queues, name
        assert "--concurrency" in words
        # Scalable with --scale: no fixed container name, no host port.
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], name
        assert as_mapping(services[name]["environment"]).get("DUMB_INIT_SETSID") == "0"


def test_gpu_worker_scaling_and_gpu_example_documented(raw):
    assert "--scale airflow-worker-gpu=" in raw
    gpu_block = raw[raw.index("airflow-worker-gpu:") - 1200 : raw.index("airflow-worker-gpu:")]
    for line in ("deploy:", "reservations:", "devices:", "driver: nvidia", "capabilities: [gpu]"):
        assert re.search(rf"^\s*#.*{re.escape(line)}", gpu_block, re.M), f"commented GPU {line}"


def test_healthchecks_on_long_running_services(services):
    for name, svc in services.items():
        if name == "airflow-init":
            assert svc.get("restart") in ("no", '"no"', False), "airflow-init must not restart"
            assert "healthcheck" not in svc
            continue
        hc = svc.get("healthcheck")
        assert isinstance(hc, dict) and not hc.get("disable"), f"{name}: no healthcheck"
        test = hc.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        assert svc.get("restart") in ("unless-stopped", "always"), f"{name}: restart policy"
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert (
        "--job-type DagProcessorJob" in services["airflow-dag-processor"]["healthcheck"]["test"][1]
    )
    assert "--job-type TriggererJob" in services["airflow-triggerer"]["healthcheck"]["test"][1]


def test_shell_snippets_parse(resolved, init_script):
    """Every shell that compose hands a container is valid sh/bash syntax."""
    snippets = [("airflow-init", "bash", init_script)]
    for name, svc in resolved.items():
        test = (svc.get("healthcheck") or {}).get("test") or []
        if test[:1] == ["CMD-SHELL"]:
            snippets.append((f"{name} healthcheck", "sh", test[1]))
        cmd = svc.get("command")
        entry = svc.get("entrypoint")
        if entry == ["/bin/sh", "-c"]:
            snippets.append((name, "sh", cmd[0]))
        elif isinstance(cmd, list) and cmd[:2] == ["sh", "-c"]:
            snippets.append((name, "sh", cmd[2]))
    for where, shell, script in snippets:
        shell_path = shutil.which(shell)
        assert shell_path, f"no {shell} here"
        out = subprocess.run([shell_path, "-n", "-c", script], capture_output=True, text=True)
        assert out.returncode == 0, f"{where}: {out.stderr}"


def test_depends_on_with_conditions(services):
    allowed = {"service_healthy", "service_started", "service_completed_successfully"}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions (mapping form)"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = spec.get("condition")
            assert cond in allowed, f"{name} -> {dep}: condition {cond!r}"
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"
    for name in WORKER_QUEUES:
        deps = services[name]["depends_on"]
        for dep in ("airflow-apiserver", "opensearch", "seaweedfs"):
            assert deps[dep]["condition"] == "service_healthy", f"{name} -> {dep}"
    init = services["airflow-init"]["depends_on"]
    assert init["postgres"]["condition"] == init["seaweedfs"]["condition"] == "service_healthy"

    # No cycles.
    def visit(node, stack):
        assert node not in stack, f"depends_on cycle: {' -> '.join([*stack, node])}"
        for dep in services[node].get("depends_on") or {}:
            visit(dep, [*stack, node])

    for name in services:
        visit(name, [])


def test_volumes_mount_project_folders(compose, services):
    declared = set(compose.get("volumes") or {})
    for name in AIRFLOW_SERVICES:
        mounts = {}
        for vol in services[name].get("volumes") or []:
            src, dst = vol.split(":")[:2]
            mounts[src] = dst
            if not src.startswith((".", "/")):
                assert src in declared, f"{name}: named volume {src} is not declared"
        for src, dst in MOUNTS.items():
            assert mounts.get(src) == dst, f"{name}: {src} must be mounted at {dst}"
            assert (ROOT / src).is_dir()
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name}: named volume {src} is not declared"


# --------------------------------------------------------------------------- environment


def test_every_variable_is_in_env_example(compose, example_env):
    used = {name for _, text in walk_strings(compose) for name, _, _ in references(text)}
    missing = used - set(example_env)
    assert not missing, f".env.example lacks {sorted(missing)}"
    unused = set(example_env) - used
    assert not unused, f".env.example lists variables compose never uses: {sorted(unused)}"


def test_env_example_agrees_with_compose_defaults(compose, example_env):
    for path, text in walk_strings(compose):
        for name, op, arg in references(text):
            if op == ":-" and example_env.get(name):
                assert example_env[name] == arg, (
                    f"{'.'.join(path)}: default of {name} is {arg!r}, .env.example says "
                    f"{example_env[name]!r}"
                )


def test_compose_resolves_with_filled_env_and_not_without(services, example_env, filled_env):
    resolve(services, filled_env)
    required = {n for _, t in walk_strings(services) for n, op, _ in references(t) if op == ":?"}
    assert required, "no required variables at all?"
    for name in required:
        env = {k: v for k, v in filled_env.items() if k != name}
        with pytest.raises(MissingVariable):
            resolve(services, env)
        assert not example_env[name], f".env.example must leave the secret {name} empty"


def config_table_settings() -> list[str]:
    doc = CONFIG_PY.read_text(encoding="utf-8")
    names = re.findall(r"^(IMAGEINDEX_[A-Z0-9_]+)\s", doc, re.M)
    assert len(names) >= 10, "cannot read the settings table of include/imageindex/config.py"
    return names


def test_imageindex_settings(compose, resolved):
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "include").rglob("*.py"))
    used = {
        m
        for path, text in walk_strings(compose)
        for m in re.findall(r"\bIMAGEINDEX_[A-Z0-9_]+\b", f"{'/'.join(path)} {text}")
    }
    unread = {name for name in used if name not in source}
    assert not unread, f"compose sets {sorted(unread)}, which nothing in include/ reads"
    common = as_mapping(compose["x-airflow-common-env"])
    unset = [name for name in config_table_settings() if name not in common]
    assert not unset, (
        f"settings of include/imageindex/config.py missing from docker-compose.yaml's "
        f"x-airflow-common-env (and .env.example): {unset}"
    )
    for name in AIRFLOW_SERVICES:
        env = as_mapping(resolved[name]["environment"])
        assert env["IMAGEINDEX_STAGING"] == "s3://imageindex/staging"
        assert env["IMAGEINDEX_REGISTRY"] == "/opt/airflow/config/registry.compose.yaml"
        assert env["IMAGEINDEX_STORE"] == "opensearch+conn://opensearch_default"
        assert env["IMAGEINDEX_S3_CONN_ID"]
        # The registry file is the one ./config brings into the container.
        rel = Path(env["IMAGEINDEX_REGISTRY"]).relative_to(MOUNTS["./config"])
        assert (ROOT / "config" / rel).is_file()
        # The model cache lives on a named volume, shared by the workers.
        cache = env["IMAGEINDEX_MODEL_CACHE"]
        named = [
            v.split(":")[1]
            for v in resolved[name]["volumes"]
            if not v.startswith((".", "/")) and cache.startswith(v.split(":")[1])
        ]
        assert named, f"{name}: IMAGEINDEX_MODEL_CACHE={cache} is not on a named volume"


def test_airflow_components_share_config(compose, resolved):
    shared = (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    )
    raw_common = as_mapping(compose["x-airflow-common-env"])
    assert re.fullmatch(
        r"\$\{AIRFLOW_JWT_SECRET:\?[^}]+\}", raw_common["AIRFLOW__API_AUTH__JWT_SECRET"]
    )
    values = {}
    for name in AIRFLOW_SERVICES:
        env = as_mapping(resolved[name]["environment"])
        for key in shared:
            assert env.get(key), f"{name}: {key} is not set"
            values.setdefault(key, set()).add(env[key])
    for key, seen in values.items():
        assert len(seen) == 1, f"{key} differs between Airflow components"
    url = values["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].pop()
    assert url == "http://airflow-apiserver:8080/execution/"
    assert any(p.endswith(":8080") for p in resolved["airflow-apiserver"]["ports"])


def test_airflow_env_file(compose, services):
    """docker/airflow.env is every Airflow service's env_file and the only place of its settings
    (the integration tier reads the same file); compose does not interpolate env_file values,
    so the file holds plain values and no secret."""
    settings = read_env_file(AIRFLOW_ENV)
    assert settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert settings["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".FabAuthManager")
    common = as_mapping(compose["x-airflow-common-env"])
    for name, value in settings.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"{AIRFLOW_ENV.name}: {name}"
        assert "$" not in value and value[:1] not in ("'", '"'), f"{name}: plain values only"
        assert not SECRET_NAME.search(name), f"{name}: secrets belong in .env"
        assert name not in common, f"{name} is set in x-airflow-common-env too"
    for name in AIRFLOW_SERVICES:
        env_file = services[name].get("env_file")
        assert env_file in (["docker/airflow.env"], "docker/airflow.env"), name
        overlap = set(as_mapping(services[name]["environment"])) & set(settings)
        assert not overlap, f"{name} overrides {sorted(overlap)} of docker/airflow.env"


def test_no_secret_literals(compose, services):
    for path, text in walk_strings(compose):
        where = ".".join(path)
        name = path[-1]
        is_env = "environment" in path or path[0] == "x-airflow-common-env"
        if is_env and SECRET_NAME.search(name):
            refs = references(text)
            assert len(refs) == 1 and re.fullmatch(r"\$\{[^}]+\}", text), (
                f"{where}: a secret must be exactly one ${{VAR}} reference, got {text!r}"
            )
            var, op, _ = refs[0]
            if var not in OPTIONAL_SECRETS:
                assert op == ":?", f"{where}: required secret {var} must be ${{{var}:?message}}"
        # Credentials inside URLs are references too.
        for m in re.finditer(r"://[^:/@\s]*:([^@\s]+)@", text):
            assert m.group(1).startswith("${"), f"{where}: literal password in a URL"
        # Commands and healthchecks read secrets from the container's environment at run
        # time ($$VAR), never from compose interpolation.
        if not is_env:
            for var, _, _ in references(text):
                assert not SECRET_NAME.search(var), f"{where}: interpolates the secret {var}"
    os_env = as_mapping(services["opensearch"]["environment"])
    assert "DISABLE_SECURITY_PLUGIN" not in os_env and "plugins.security.disabled" not in os_env
    assert "https://" in services["opensearch"]["healthcheck"]["test"][1]


def test_host_ports_of_data_services_are_local(services):
    for name in BACKING_SERVICES:
        for port in services[name].get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


# ----------------------------------------------------------------------------- airflow-init


def test_init_migrates_and_creates_pools(init_script):
    assert re.search(r"^airflow db migrate$", init_script, re.M)
    assert "airflow users create --role Admin" in init_script
    assert "airflow connections import --overwrite" in init_script
    pools = set(re.findall(r"^airflow pools set (\S+) ", init_script, re.M))
    assert pools == POOLS
    for marker in ("CONNECTIONS", "BUCKETS"):
        snippet = heredoc(init_script, marker)
        compile(snippet, f"airflow-init {marker}", "exec")


def run_connections_snippet(init_script, tmp_path, env) -> dict:
    from airflow.secrets.local_filesystem import load_connections_dict

    out = tmp_path / "connections.json"
    proc = subprocess.run(
        [sys.executable, "-", str(out)],
        input=heredoc(init_script, "CONNECTIONS"),
        text=True,
        capture_output=True,
        env={"PATH": os.environ.get("PATH", ""), **env},
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o077 == 0, "the connections file must be private"
    for value in (env.get("S3_SECRET_KEY"), env.get("DASHSCOPE_API_KEY")):
        if value:
            assert value not in proc.stdout
    return load_connections_dict(str(out))


def init_env(resolved) -> dict[str, str]:
    return as_mapping(resolved["airflow-init"]["environment"])


def test_init_connections(init_script, resolved, tmp_path):
    env = init_env(resolved)
    conns = run_connections_snippet(init_script, tmp_path, env)
    s3 = conns[env["IMAGEINDEX_S3_CONN_ID"]]
    assert s3.conn_type == "aws"
    assert (s3.login, s3.password) == (env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"])
    assert s3.extra_dejson == {"endpoint_url": "http://seaweedfs:8333", "region_name": "us-east-1"}
    osc = conns["opensearch_default"]
    assert {k: getattr(osc, k) for k in ("conn_type", "host", "port", "login")} == {
        "conn_type": "opensearch",
        "host": "opensearch",
        "port": 9200,
        "login": "admin",
    }
    assert osc.password == env["OPENSEARCH_INITIAL_ADMIN_PASSWORD"]
    assert osc.extra_dejson == {"use_ssl": True, "verify_certs": False}
    assert "dashscope_default" not in conns, "no DashScope connection without a key"

    # The store builds its client from exactly this connection.
    from imageindex.stores.opensearch import client_from_connection

    osc.conn_id = "opensearch_default"
    client = client_from_connection(osc)
    assert client.transport.connection_pool.connections[0].host == "https://opensearch:9200"
    assert client.transport.kwargs["verify_certs"] is False
    assert client.transport.kwargs["http_auth"] == ("admin", osc.password)

    env = {**env, "DASHSCOPE_API_KEY": "sk-test-0123456789", "OPENSEARCH_VERIFY_CERTS": "true"}
    conns = run_connections_snippet(init_script, tmp_path, env)
    ds = conns["dashscope_default"]
    assert (ds.conn_type, ds.password, ds.host) == ("generic", "sk-test-0123456789", None)
    assert conns["opensearch_default"].extra_dejson["verify_certs"] is True


def test_registry_matches_workers_pools_and_connections(services, init_script, resolved, tmp_path):
    from imageindex.registry import load_registry

    registry = load_registry(REGISTRY)
    assert registry.datasets, "config/registry.compose.yaml declares no dataset"
    worker_queues = set().union(*(queues_of(services[w]["command"]) for w in WORKER_QUEUES))
    pools = set(re.findall(r"^airflow pools set (\S+) ", init_script, re.M))
    env = {**init_env(resolved), "DASHSCOPE_API_KEY": "sk-test-0123456789"}
    conn_ids = set(run_connections_snippet(init_script, tmp_path, env))
    used_queues = {"default"}
    for ds in registry.datasets.values():
        for stage, opts in ds.tasks.items():
            queue = opts.get("queue", "default")
            used_queues.add(queue)
            assert queue in worker_queues, f"{ds.id}.{stage}: no worker listens on {queue!r}"
            if "pool" in opts:
                assert opts["pool"] in pools, f"{ds.id}.{stage}: pool {opts['pool']} not created"
        uri = ds.store_uri
        if uri.startswith("opensearch+conn://"):
            assert uri.split("://", 1)[1] in conn_ids
        for model in (ds.tagger, ds.embedder):
            if model.get("conn_id"):
                assert model["conn_id"] in conn_ids
            if model.get("definitions"):
                assert Path(model["definitions"]).is_file(), model["definitions"]
        if ds.s3_conn_id:
            assert ds.s3_conn_id in conn_ids
    assert worker_queues == used_queues, "a worker listens on a queue no stage uses"
    samples = registry.get("samples")
    assert samples.version().source == "s3://imageindex/samples/"
    assert samples.tasks == {
        "preprocess": {"queue": "preprocess"},
        "tag_embed": {"queue": "models"},
        "upsert": {"pool": "imageindex_upsert"},
    }
    assert samples.store == {"type": "opensearch", "uri": "opensearch+conn://opensearch_default"}


@pytest.mark.slow
def test_init_script_end_to_end(seaweedfs, init_script, resolved, tmp_path):
    """airflow-init's whole script, run twice on a SQLite Airflow against a real SeaweedFS.

    Only the admin user cannot be made here (the FAB provider comes with the Docker image, not
    with requirements.txt); the script carries on past that, as it does when the user exists.
    """
    from cryptography.fernet import Fernet

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "airflow").exists():
        pytest.skip("the airflow command is not installed next to this Python")
    token = secrets.token_hex(4)
    conn_id = f"compose_s3_{token}"
    staging_bucket = f"compose-staging-{token}"
    samples_bucket = f"compose-samples-{token}"
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        REGISTRY.read_text(encoding="utf-8").replace(
            "s3://imageindex/samples/", f"s3://{samples_bucket}/samples/"
        ),
        encoding="utf-8",
    )
    env = {
        k: v
        for k, v in init_env(resolved).items()
        if not k.startswith("AIRFLOW__")  # the image's Postgres, Celery and FAB settings
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(tmp_path),
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow.db'}",
        AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
        AIRFLOW__CORE__LOAD_EXAMPLES="false",
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
        IMAGEINDEX_HOME=str(tmp_path / "imageindex"),
        IMAGEINDEX_MODEL_CACHE=str(tmp_path / "model-cache"),
        IMAGEINDEX_REGISTRY=str(registry),
        IMAGEINDEX_STAGING=f"s3://{staging_bucket}/staging",
        IMAGEINDEX_S3_CONN_ID=conn_id,
        S3_ACCESS_KEY=seaweedfs.access_key,
        S3_SECRET_KEY=seaweedfs.secret_key,
        S3_ENDPOINT_URL=seaweedfs.endpoint_url,
        S3_REGION=seaweedfs.region,
    )
    # The S3 connection must come from the metadata database, as in the container.
    assert not any(k.startswith("AIRFLOW_CONN_") for k in env)

    def run() -> str:
        proc = subprocess.run(
            ["bash", "-c", init_script], env=env, capture_output=True, text=True, timeout=540
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        assert "airflow-init: done" in proc.stdout
        for secret in (seaweedfs.secret_key, env["OPENSEARCH_INITIAL_ADMIN_PASSWORD"]):
            assert secret not in output
        return proc.stdout

    first = run()
    assert f"connections: {conn_id}, opensearch_default" in first
    assert f"bucket {staging_bucket}: created" in first
    assert f"bucket {samples_bucket}: created" in first
    uploaded = int(re.search(r"samples: (\d+) photos uploaded", first).group(1))
    assert uploaded > 0
    listing = seaweedfs.client().list_objects_v2(Bucket=samples_bucket, Prefix="samples/")
    keys = [o["Key"] for o in listing["Contents"]]
    assert len(keys) == uploaded
    assert all(k.count("/") == 2 for k in keys), "samples/<group>/<file>"

    second = run()
    assert f"bucket {staging_bucket}: exists" in second
    assert "is not empty, left as it is" in second

    def airflow_json(*args):
        proc = subprocess.run(
            ["airflow", *args, "--output", "json"], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    pools = {p["pool"]: int(p["slots"]) for p in airflow_json("pools", "list")}
    assert pools["dashscope"] == int(env["DASHSCOPE_POOL_SLOTS"])
    assert pools["imageindex_upsert"] == int(env["UPSERT_POOL_SLOTS"])
    conns = {c["conn_id"] for c in airflow_json("connections", "list")}
    assert {conn_id, "opensearch_default"} <= conns
    assert "dashscope_default" not in conns


# -------------------------------------------------------------------------- compose-go

COMPOSE_GO = ROOT / "tests" / "composego"


@pytest.fixture(scope="module")
def compose_go(tmp_path_factory):
    """``load(env)``: compose-go loads docker-compose.yaml with only ``env``'s variables."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain to build tests/composego (compose-go)")
    out_dir = tmp_path_factory.mktemp("composego")
    binary = out_dir / "composeconfig"
    build = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=COMPOSE_GO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]

    def load(env: dict[str, str]) -> subprocess.CompletedProcess:
        assert not any("'" in v for v in env.values())
        env_file = out_dir / "vars.env"
        # Single quotes: the value as written, nothing substituted inside it.
        env_file.write_text("".join(f"{k}='{v}'\n" for k, v in env.items()), encoding="utf-8")
        return subprocess.run(
            [str(binary), str(COMPOSE_FILE), str(env_file)],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(out_dir)},
        )

    return load


def test_compose_go_loads_the_file_and_interpolates_like_this_suite(
    compose_go, resolved, filled_env
):
    proc = compose_go(filled_env)
    assert proc.returncode == 0, proc.stderr
    real = json.loads(proc.stdout)["services"]
    assert set(real) == set(resolved)
    compared = 0
    for name, svc in resolved.items():
        ours, theirs = svc, real[name]
        env = theirs.get("environment") or {}
        for key, value in as_mapping(ours.get("environment")).items():
            # compose-go also merges env_file entries in; the ones written here must agree.
            assert (env.get(key) or "") == value, f"{name}: {key}"
            compared += 1
        for field in ("command", "entrypoint"):
            if ours.get(field) is not None:
                assert theirs[field] == command_words(ours[field]), f"{name}: {field}"
                compared += 1
        if "healthcheck" in ours:
            assert theirs["healthcheck"]["test"] == ours["healthcheck"]["test"], name
            compared += 1
        if "image" in ours:
            assert theirs["image"] == ours["image"], name
            compared += 1
    assert compared > 100, compared


def test_compose_go_refuses_each_missing_required_variable(compose_go, services, filled_env):
    required = {n for _, t in walk_strings(services) for n, op, _ in references(t) if op == ":?"}
    assert required
    for name in sorted(required):
        proc = compose_go({k: v for k, v in filled_env.items() if k != name})
        assert proc.returncode != 0, f"compose-go accepted the file without {name}"
        assert name in proc.stderr, proc.stderr


# ------------------------------------------------------------------------- compose CLI


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        ok = subprocess.run([docker, "compose", "version"], capture_output=True)
        if ok.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file(filled_env, tmp_path):
    """``docker compose config`` (no daemon needed) validates against the Compose spec."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI here (docker compose / docker-compose)")
    env_file = tmp_path / "filled.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled_env.items()), encoding="utf-8")
    clean_env = {k: v for k, v in os.environ.items() if k not in filled_env}
    proc = subprocess.run(
        [
            *cli,
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=clean_env,
    )
    assert proc.returncode == 0, proc.stderr
