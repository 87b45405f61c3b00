"""docker-compose.yml and Dockerfile, checked without a Docker engine.

Every command a container runs must parse with the real ``hybridserve`` argument parser (or be a
Locust command on ``loadtests/locustfile.py``), and every ``HYBRIDSERVE_*`` variable must name a
real :class:`serving.settings.Settings` field (``HYBRIDSERVE_LOAD_*`` are the locustfile's options),
so the compose file cannot drift from the code it deploys.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridserve.cli import _parser
from serving.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
LOCUSTFILE = "loadtests/locustfile.py"
MONITORING = ("prometheus", "grafana")  # third-party images, configured from deploy/
_DEFAULTED = re.compile(r"^\$\{[A-Z0-9_]+:-(.*)\}$")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]  # type: ignore[no-any-return]


def _resolve(value: str) -> str:
    """``${VAR:-default}`` as compose resolves it with VAR unset."""
    match = _DEFAULTED.match(value)
    return match.group(1) if match else value


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _resolve(str(v)) for k, v in env.items()}


def _locust_env_vars() -> set[str]:
    """Environment variables the locustfile's options read. Found in its text, not by importing
    it: importing locust monkey-patches the standard library with gevent."""
    text = (ROOT / LOCUSTFILE).read_text()
    literal = set(re.findall(r'env_var="(HYBRIDSERVE_LOAD_[A-Z_]+)"', text))
    # Options declared as ("--flag", type, default, help) and mapped to HYBRIDSERVE_LOAD_<FLAG>.
    flags = re.findall(r'\(\s*"(--[a-z][a-z-]*)",', text)
    derived = {"HYBRIDSERVE_LOAD_" + f.removeprefix("--").replace("-", "_").upper() for f in flags}
    return literal | derived


def test_services_present() -> None:
    services = _services()
    assert {"redis", "api", "locust-master", "locust-worker", *MONITORING} <= set(services)
    assert str(services["redis"]["image"]).startswith("redis:")
    assert "replicas" in services["api"]["deploy"] and "replicas" in services["locust-worker"]["deploy"]


def test_redis_memory_limits_come_from_env_with_defaults() -> None:
    command = _services()["redis"]["command"]
    memory = command[command.index("--maxmemory") + 1]
    policy = command[command.index("--maxmemory-policy") + 1]
    assert memory.startswith("${REDIS_MAXMEMORY:-") and _resolve(memory) == "256mb"
    assert policy.startswith("${REDIS_MAXMEMORY_POLICY:-") and _resolve(policy) == "allkeys-lru"


@pytest.mark.parametrize("name", sorted(_services()))
def test_commands_are_real(name: str) -> None:
    service = _services()[name]
    command = service.get("command")
    if name == "redis":
        assert command[0] == "redis-server"
        return
    if name in MONITORING:
        return  # their wiring: test_prometheus_scrapes_every_api_replica, test_grafana_is_provisioned
    assert isinstance(command, list), f"{name}: use the exec (list) form so no shell reinterprets it"
    argv = [_resolve(str(part)) for part in command]
    if argv[0] == "hybridserve":
        args = _parser().parse_args(argv[1:])  # SystemExit (a test failure) on an unknown option
        assert callable(args.func)
        if args.command == "serve":
            assert args.host == "0.0.0.0", "inside a container the API must listen beyond loopback"
    else:
        assert argv[:3] == ["locust", "-f", LOCUSTFILE], argv
        assert ("--master" in argv) != ("--worker" in argv)
        assert (ROOT / LOCUSTFILE).is_file()


@pytest.mark.parametrize("name", sorted(_services()))
def test_env_vars_are_settings_fields(name: str) -> None:
    fields = set(Settings.model_fields)
    locust_vars = _locust_env_vars()
    for var, value in _environment(_services()[name]).items():
        if not var.startswith("HYBRIDSERVE_"):
            continue
        if var.startswith("HYBRIDSERVE_LOAD_"):
            assert var in locust_vars, f"{name}: {var} is not a locustfile option"
            continue
        field = var.removeprefix("HYBRIDSERVE_").lower()
        assert field in fields, f"{name}: {var} is not a Settings field"
        if value:  # the default value must also validate (blank admin token means "disabled")
            Settings.model_validate({field: value})


def test_dockerfile_builds_what_compose_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install ." in dockerfile and "hybridserve train" in dockerfile
    for env in re.findall(r"\bENV (HYBRIDSERVE_[A-Z_]+)=", dockerfile):
        assert env.removeprefix("HYBRIDSERVE_").lower() in Settings.model_fields
    built = [n for n, s in _services().items() if s.get("build")]
    assert set(built) >= {"api", "locust-master", "locust-worker"}


CLUSTER_COMPOSE = ROOT / "docker-compose.cluster.yml"


def _cluster_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(CLUSTER_COMPOSE.read_text())["services"]  # type: ignore[no-any-return]


def test_cluster_variant_forms_a_cluster_of_its_nodes() -> None:
    services = _cluster_services()
    nodes = sorted(name for name in services if name.startswith("redis-node-"))
    assert len(nodes) == 6
    for name in nodes:
        command = [_resolve(str(part)) for part in services[name]["command"]]
        assert command[0] == "redis-server" and command[command.index("--cluster-enabled") + 1] == "yes"
    init = " ".join(services["redis-cluster-init"]["command"])
    assert "redis-cli --cluster create" in init and "--cluster-replicas 1" in init and "--cluster-yes" in init
    assert "for n in 1 2 3 4 5 6" in init and set(services["redis-cluster-init"]["depends_on"]) == set(nodes)


@pytest.mark.parametrize("name", ["precompute", "api"])
def test_cluster_variant_points_the_servers_at_the_cluster(name: str) -> None:
    from serving.cluster import ClusterURL

    service = _cluster_services()[name]
    assert name in _services(), "an override of a service of the base file"
    url = _environment(service)["HYBRIDSERVE_REDIS_URL"]
    Settings.model_validate({"redis_url": url})
    seeds = ClusterURL(url).seeds
    assert seeds and all(host in _cluster_services() and port == 6379 for host, port in seeds)
    assert service["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts, each of which must exist."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        assert source.startswith("./"), f"{volume}: mount a file of this repository"
        assert (ROOT / source).exists(), f"{volume}: {source} is missing"
        mounts[target] = ROOT / source
    return mounts


def _api_port() -> int:
    argv = [_resolve(str(part)) for part in _services()["api"]["command"]]
    return int(_parser().parse_args(argv[1:]).port)


def test_prometheus_scrapes_every_api_replica() -> None:
    service = _services()["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    config = yaml.safe_load(_mounts(service)[config_path].read_text())
    [job] = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # DNS discovery of the service name finds every replica that --scale starts; a static target would find one.
    [dns] = job["dns_sd_configs"]
    assert dns["names"] == ["api"] and dns["type"] == "A" and dns["port"] == _api_port()
    assert str(_api_port()) in [str(p) for p in _services()["api"]["expose"]]
    assert "api" in service["depends_on"]


def test_grafana_is_provisioned() -> None:
    service = _services()["grafana"]
    mounts = _mounts(service)
    provisioning = mounts["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus_port = _services()["prometheus"]["ports"][0].rsplit(":", 1)[-1]
    assert datasource["type"] == "prometheus" and datasource["url"] == f"http://prometheus:{prometheus_port}"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "hybridserve.yml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    files = sorted(dashboards.glob("*.json"))
    assert files, "no dashboard to provision"
    home = _environment(service)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/") and (dashboards / Path(home).name).is_file()
    for path in files:
        dashboard = json.loads(path.read_text())
        uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
        assert uids == {datasource["uid"]}, f"{path.name}: panels query {uids}, provisioned is {datasource['uid']}"
