"""deploy/compose.yaml (issue 16): one GPU server, checked without Docker.

Parses the file with PyYAML and checks that what it references exists: the Dockerfile target, the preload
modules, the CLI options (parsed by the real click commands of ``dask scheduler``, ``dask worker`` and
``altlas-dask``), the config keys of its ``ALTLAS_*`` variables (through ``load_config``), the health URLs
and published ports against the ports the commands listen on, the mounted files, the GPU device
reservations, and the Prometheus and Grafana provisioning it mounts. promtool checks the Prometheus config.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from conftest import REPO
from distributed.cli.dask_scheduler import main as dask_scheduler_cli
from distributed.cli.dask_worker import main as dask_worker_cli
from test_docker import stages

from altlas_dask.config import load_config

DEPLOY = REPO / "deploy"
ALTLAS_SERVICES = {"scheduler", "worker", "gateway", "console"}
GPU_SERVICES = {"worker", "dcgm-exporter"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def option(command: list[str], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    return value


def listen_ports(command: list[str]) -> set[int]:
    """Ports a role's command listens on."""
    ports = set()
    for name in ("--port", "--dashboard-address"):
        for arg in command:
            if arg.startswith(f"{name}="):
                ports.add(int(arg.split("=", 1)[1].rsplit(":", 1)[-1]))
    return ports


def parse(cli: click.Command, args: list[str]) -> dict[str, Any]:
    """Let the real click command parse ``args`` (unknown options and bad values fail); nothing runs."""
    with cli.make_context(cli.name or "cmd", list(args), resilient_parsing=False) as ctx:
        return ctx.params


def test_services_and_images():
    svc = services()
    assert set(svc) == ALTLAS_SERVICES | {"dcgm-exporter", "prometheus", "grafana"}
    dockerfile_stages = stages()
    for name in ALTLAS_SERVICES:
        build = svc[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "docker" / "Dockerfile"
        assert build["target"] in dockerfile_stages
        assert svc[name]["image"] == svc["scheduler"]["image"], "one image for every role"
    for name in set(svc) - ALTLAS_SERVICES:
        assert re.search(r":v?\d[\w.-]*$", svc[name]["image"]), f"{name}: pin the image tag"


def test_role_commands_parse_with_the_real_clis():
    svc = services()
    scheduler = svc["scheduler"]["command"]
    assert scheduler[:2] == ["dask", "scheduler"]
    params = parse(dask_scheduler_cli, scheduler[2:])
    assert params["preload"] == ("scheduler_plugins.gpu_router",) and params["host"] == "0.0.0.0"

    worker = svc["worker"]["command"]
    assert worker[:3] == ["dask", "cuda", "worker"], "dask-cuda: one worker per GPU"
    # dask-cuda cannot be imported without a GPU; its CLI shares these options with `dask worker`
    params = parse(dask_worker_cli, worker[3:])
    assert params["scheduler"] == "tcp://scheduler:8786" and params["preload"] == ("altlas_dask.worker",)
    routing = load_config(REPO / "cluster.yaml", environ={}).routing()
    assert params["nthreads"] == routing.max_concurrent_tasks_per_gpu, "worker threads = tasks placed per GPU"

    from altlas_dask.cli.main import cli

    for name in ("gateway", "console"):
        command = svc[name]["command"]
        assert command[0] == "altlas-dask"
        params = parse(cli.commands[command[1]], command[2:])
        assert params["scheduler"] == "tcp://scheduler:8786" and params["host"] == "0.0.0.0"


def test_environment_is_valid_config():
    for name in ALTLAS_SERVICES:
        env = {k: str(v) for k, v in services()[name]["environment"].items()}
        config_path = env.pop("ALTLAS_CONFIG")
        # the file mounted there is the repo's cluster.yaml
        mounts = dict(v.split(":")[1::-1] for v in services()[name]["volumes"] if v.startswith("."))
        assert (DEPLOY / mounts[config_path]).resolve() == REPO / "cluster.yaml"
        config = load_config(REPO / "cluster.yaml", environ=env)
        assert config.accounting.database == "/var/lib/altlas/altlas.sqlite"


def test_health_urls_and_published_ports_match_what_listens():
    svc = services()
    defaults = {"ALTLAS_HEALTH_URL": "http://127.0.0.1:8787/health"}  # the image's ENV (test_docker checks it)
    for name in ALTLAS_SERVICES:
        command = svc[name]["command"]
        listening = listen_ports(command)
        if "ALTLAS_HEALTH_DIR" in svc[name]["environment"]:  # GPU workers: each registers its own URL
            assert "--preload=altlas_dask.worker" in command, f"{name}: only the GPU worker plugin registers"
            continue
        url = {**defaults, **svc[name]["environment"]}["ALTLAS_HEALTH_URL"]
        port = int(re.match(r"http://127\.0\.0\.1:(\d+)/", url).group(1))
        assert port in listening, f"{name}: health URL {url} but listens on {listening}"
        for published in svc[name].get("ports", []):
            host_ip, _host_port, container_port = published.split(":")
            assert host_ip == "127.0.0.1", f"{name}: {published} must stay on loopback"
            assert int(container_port) in listening | {8786}, f"{name}: {published}"


def test_gpus_through_device_reservations():
    for name, service in services().items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if name in GPU_SERVICES:
            assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], name
        else:
            assert devices is None, f"{name} must not reserve GPUs"


def test_mounted_files_exist():
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose()["volumes"], f"{name}: named volume {source} is not declared"


def test_prometheus_config_has_deploy_jobs_and_compose_targets():
    svc = services()
    inside = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    outside = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert inside["rule_files"] == outside["rule_files"] == ["alerts.yml"]
    assert {j["job_name"] for j in outside["scrape_configs"]} <= {j["job_name"] for j in inside["scrape_configs"]}
    listening = {name: listen_ports(s["command"]) for name, s in svc.items() if name in ALTLAS_SERVICES}
    listening["dcgm-exporter"] = {9400}  # dcgm-exporter's default :9400
    for job in inside["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert int(port) in listening[host], f"job {job['job_name']}: {target}"
    # the config and the rules are mounted side by side, as rule_files expects
    mounts = {v.split(":")[1] for v in svc["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounts


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's promtool is not installed")
def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path):
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_dashboard():
    grafana = services()["grafana"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "altlas.yml").read_text())["providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    dashboard_target = f"{provider['options']['path']}/grafana-dashboard.json"
    assert mounts[dashboard_target] == "./grafana-dashboard.json"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target


def test_tls_identity_is_prepared_but_off():
    """Issue 12 (mutual TLS) has not landed: the /certs mounts and TLS variables are there, commented out."""
    text = (DEPLOY / "compose.yaml").read_text()
    assert "# TLS identity (issue 12" in text and "./certs:/certs:ro" in text
    assert not any("/certs" in v for s in services().values() for v in s.get("volumes", []))
