"""``altlas-dask k8s render`` and deploy/k8s/example/ (issue 16), validated offline.

- The checked-in example equals a fresh render by the real CLI (into a tmp dir; nothing tracked is written).
- Every ``DaskCluster`` / ``DaskAutoscaler`` (and the ``DaskWorkerGroup`` the operator derives from the
  cluster's worker section) validates against the CRD ``openAPIV3Schema`` shipped in the dask-kubernetes
  package, strictly: a field the schema does not name is an error (the API server would drop it).
- Built-in kinds validate against Kubernetes' OpenAPI schemas (kubernetes-validate, strict, offline).
- The Prometheus scrape config passes ``promtool check config``; the ServiceMonitors select the ports
  the operator's scheduler Service has.
- Role commands parse with the real ``dask worker`` / ``altlas-dask`` option parsers; volume mounts name
  declared volumes; the ConfigMap is the config file.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import dask_kubernetes
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import REPO, altlas
from distributed.cli.dask_worker import main as dask_worker_cli

from altlas_dask.cli.k8s import EXAMPLE_COMMAND
from altlas_dask.config import load_config
from altlas_dask.ops.k8s import RenderOptions, render

EXAMPLE = REPO / "deploy" / "k8s" / "example"
CRDS = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"
KUBERNETES_VERSION = "1.30"  # oldest minor the manifests must work on
BUILT_IN = {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"}


def load_dir(path: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: yaml.safe_load(p.read_text()) for p in sorted(path.glob("*.yaml")) if p.name != "kustomization.yaml"
    }


def example() -> dict[str, dict[str, Any]]:
    return load_dir(EXAMPLE)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [m for m in example().values() if m["kind"] == kind]


def strict(schema: Any) -> Any:
    """The CRD schema with ``additionalProperties: false`` wherever it lists properties and allows no more."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{kind.lower()}.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def validate_crd(manifest: dict[str, Any]) -> None:
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.validate(body, crd_schema(manifest["kind"]))


def pods() -> list[tuple[str, dict[str, Any]]]:
    """``(where, pod spec)`` of every pod the manifests define."""
    out = []
    for cluster in of_kind("DaskCluster"):
        out.append(("scheduler", cluster["spec"]["scheduler"]["spec"]))
        out.append(("worker", cluster["spec"]["worker"]["spec"]))
    for deployment in of_kind("Deployment"):
        out.append((deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]))
    return out


def parse(cli: click.Command, args: list[str]) -> dict[str, Any]:
    with cli.make_context(cli.name or "cmd", list(args)) as ctx:
        return ctx.params


# -- the example is what the command writes ---------------------------------------------------------
def test_example_equals_a_fresh_render(tmp_path: Path):
    args = shlex.split(EXAMPLE_COMMAND)
    assert args[:3] == ["altlas-dask", "k8s", "render"]
    out = tmp_path / "example"
    args[args.index("--out") + 1] = str(out)
    args[args.index("--config") + 1] = str(REPO / "cluster.yaml")
    result = altlas(*args[1:])
    assert result.returncode == 0, result.stderr
    fresh = sorted(p.name for p in out.iterdir())
    assert fresh == sorted(p.name for p in EXAMPLE.iterdir())
    for name in fresh:
        assert (out / name).read_text() == (EXAMPLE / name).read_text(), (
            f"deploy/k8s/example/{name} is stale: re-run `{EXAMPLE_COMMAND}` from the repository root"
        )
    kustomization = yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())
    assert kustomization["resources"] == sorted(set(fresh) - {"kustomization.yaml"})


def test_readme_gives_the_example_command():
    assert EXAMPLE_COMMAND in (REPO / "deploy" / "README.md").read_text()


# -- schemas ---------------------------------------------------------------------------------------
def test_operator_resources_validate_against_the_shipped_crds():
    kinds = {m["kind"] for m in example().values()}
    assert {"DaskCluster", "DaskAutoscaler"} <= kinds
    for manifest in example().values():
        if manifest["apiVersion"] == "kubernetes.dask.org/v1":
            validate_crd(manifest)
    # the operator turns the cluster's worker section into the DaskWorkerGroup "<name>-default"
    [cluster] = of_kind("DaskCluster")
    group = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": f"{cluster['metadata']['name']}-default"},
        "spec": {"cluster": cluster["metadata"]["name"], "worker": cluster["spec"]["worker"]},
    }
    validate_crd(group)


def test_the_crd_check_catches_a_bad_field():
    [cluster] = of_kind("DaskCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["worker"]["spec"]["containers"][0]["resource"] = {"limits": {"nvidia.com/gpu": 4}}  # typo
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        validate_crd(bad)
    bad = copy.deepcopy(cluster)
    bad["spec"]["worker"]["replicas"] = "2"
    with pytest.raises(jsonschema.ValidationError, match="integer"):
        validate_crd(bad)


def test_built_in_kinds_validate_against_kubernetes_openapi():
    seen = set()
    for name, manifest in example().items():
        if manifest["kind"] in BUILT_IN:
            try:
                kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {exc}")
            seen.add(manifest["kind"])
    assert seen == BUILT_IN
    # and the pod specs inside the DaskCluster are valid pods too
    for where, spec in pods()[:2]:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": where}, "spec": spec}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_the_openapi_check_catches_a_bad_field():
    [deployment, *_] = of_kind("Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["port"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


# -- what the resources say -------------------------------------------------------------------------
def test_scheduler_runs_the_router_and_workers_request_gpus():
    [cluster] = of_kind("DaskCluster")
    [scheduler] = cluster["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    preloads = [scheduler["args"][i + 1] for i, arg in enumerate(scheduler["args"]) if arg == "--preload"]
    assert preloads == ["scheduler_plugins.gpu_router", "scheduler_plugins.autoscale"]
    env = {e["name"]: e["value"] for e in scheduler["env"]}
    assert env["DASK_ALTLAS__GPUS_PER_POD"] == "1", "the autoscaler's target is in one-GPU pods"
    assert "nvidia.com/gpu" not in str(scheduler.get("resources")), "the scheduler needs no GPU"

    worker_group = cluster["spec"]["worker"]
    assert worker_group["replicas"] == 8, "2 nodes x 4 GPUs, one pod each"
    [worker] = worker_group["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["args"][:3] == ["dask", "cuda", "worker"]
    params = parse(dask_worker_cli, worker["args"][3:])  # dask-cuda shares these options with dask worker
    assert params["preload"] == ("altlas_dask.worker",)
    assert params["nthreads"] == load_config(REPO / "cluster.yaml", environ={}).routing().max_concurrent_tasks_per_gpu
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker_group["spec"][
        "tolerations"
    ]

    [scaler] = of_kind("DaskAutoscaler")
    assert scaler["spec"] == {"cluster": cluster["metadata"]["name"], "minimum": 4, "maximum": 8}


def test_gateway_and_console_reach_the_operators_scheduler_service():
    from altlas_dask.cli.main import cli

    [cluster] = of_kind("DaskCluster")
    service = cluster["spec"]["scheduler"]["service"]
    comm = next(p["port"] for p in service["ports"] if p["name"] == "tcp-comm")
    expected = f"tcp://{cluster['metadata']['name']}-scheduler:{comm}"
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    for deployment in of_kind("Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == "altlas-dask"
        params = parse(cli.commands[container["args"][1]], container["args"][2:])
        assert params["scheduler"] == expected and params["host"] == "0.0.0.0"
        port = container["ports"][0]["containerPort"]
        assert params["port"] == port
        svc = services[deployment["metadata"]["name"]]
        assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert svc["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_secrets_and_volumes():
    for where, spec in pods():
        declared = {v["name"]: v for v in spec["volumes"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in declared, f"{where}: mount {mount['name']} has no volume"
        assert spec["securityContext"]["runAsNonRoot"] is True
        tls = declared["tls"]["secret"]
        assert tls["secretName"] == "altlas-tls" and tls["optional"] is True, "issue 12's certificates, when present"
        for container in spec["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            load_config(REPO / "cluster.yaml", environ={k: v for k, v in env.items() if k != "ALTLAS_CONFIG"})
            assert env["ALTLAS_CONFIG"] == "/etc/altlas/cluster.yaml"
    [gateway] = [d for d in of_kind("Deployment") if d["metadata"]["name"].endswith("-gateway")]
    pod = gateway["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["api-keys"]["secret"]["secretName"] == "altlas-api-keys"
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    keys = env["ALTLAS_ACCOUNTING__API_KEYS"]
    assert keys in pod["initContainers"][0]["command"][-1], "the key file is copied where the gateway reads it"
    assert "ALTLAS_ACCOUNTING__DATABASE" not in env  # the gateway never opens the scheduler's accounting database


def test_config_map_is_the_config_file():
    [config] = [m for m in of_kind("ConfigMap") if "cluster.yaml" in m["data"]]
    assert config["data"]["cluster.yaml"] == (REPO / "cluster.yaml").read_text()


def test_monitoring_targets():
    [cluster] = of_kind("DaskCluster")
    ports = {p["name"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    monitors = {m["metadata"]["name"]: m for m in of_kind("ServiceMonitor")}
    scheduler = monitors[f"{cluster['metadata']['name']}-scheduler"]["spec"]
    assert scheduler["selector"]["matchLabels"] == cluster["spec"]["scheduler"]["service"]["selector"]
    assert scheduler["endpoints"][0]["port"] in ports and scheduler["endpoints"][0]["path"] == "/metrics"
    assert any("dcgm" in name for name in monitors)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's promtool is not installed")
def test_promtool_accepts_the_rendered_scrape_config(tmp_path: Path):
    [scrape] = [m for m in of_kind("ConfigMap") if "scrape-configs.yml" in m["data"]]
    config = yaml.safe_load(scrape["data"]["scrape-configs.yml"])
    # Debian's Prometheus is built without Kubernetes service discovery: check those jobs' shape here and
    # the rest with promtool (upstream Prometheus builds, and the Helm charts', include it)
    discovered = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j]
    for job in discovered:
        assert job["kubernetes_sd_configs"][0]["role"] == "endpoints"
        assert {"action": "keep", "regex": "nvidia-dcgm-exporter"}.items() <= job["relabel_configs"][0].items()
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j not in discovered]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(scrape["data"]["scrape-configs.yml"])["scrape_configs"]}
    deploy_jobs = {
        j["job_name"] for j in yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert deploy_jobs <= jobs


# -- options and bad input -------------------------------------------------------------------------
def test_other_sizes_follow_the_options():
    manifests = render(REPO / "cluster.yaml", RenderOptions(nodes=3, gpus_per_node=8, max_nodes=6, min_nodes=0))
    [cluster] = [m for m in manifests.values() if m["kind"] == "DaskCluster"]
    assert cluster["spec"]["worker"]["replicas"] == 24
    assert cluster["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    [scaler] = [m for m in manifests.values() if m["kind"] == "DaskAutoscaler"]
    assert scaler["spec"]["minimum"] == 0 and scaler["spec"]["maximum"] == 48
    validate_crd(cluster)
    validate_crd(scaler)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "3", "--max-nodes", "2"], "--max-nodes 2 is below --nodes 3"),
        (["--name", "Altlas_1"], "--name 'Altlas_1' must be a DNS label"),
        (["--config", "/nonexistent/cluster.yaml"], "config file '/nonexistent/cluster.yaml' cannot be read"),
        (["--gpus-per-node", "0"], "--gpus-per-node"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str):
    result = altlas("k8s", "render", "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_bad_config_is_rejected_naming_the_key(tmp_path: Path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("gpu:\n  multi_gpu:\n    max_concurrent_tasks_per_gpu: 0\n")
    result = altlas("k8s", "render", "--config", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "max_concurrent_tasks_per_gpu" in result.stderr, result.stderr


# -- TLS, pull secrets, alert rules (issue 21) -------------------------------------------------------------


def flag_values(args: list[str]) -> dict[str, str]:
    return {arg: args[i + 1] for i, arg in enumerate(args[:-1]) if arg.startswith("--tls") or arg == "--protocol"}


def test_tls_gives_scheduler_and_workers_dasks_tls_flags_and_the_services_their_certificates():
    from dask_kubernetes.operator.controller.controller import build_worker_deployment_spec

    manifests = render(REPO / "cluster.yaml", RenderOptions(tls=True))
    [cluster] = [m for m in manifests.values() if m["kind"] == "DaskCluster"]
    validate_crd(cluster)
    node = {"--tls-ca-file": "/certs/ca.pem", "--tls-cert": "/certs/node.pem", "--tls-key": "/certs/node-key.pem"}
    [scheduler] = cluster["spec"]["scheduler"]["spec"]["containers"]
    assert flag_values(scheduler["args"]) == {"--protocol": "tls", **node}
    worker_pod = cluster["spec"]["worker"]["spec"]
    [worker] = worker_pod["containers"]
    assert flag_values(worker["args"]) == node
    # what the operator makes of the worker group keeps the tls:// scheduler address (it only fills in a tcp:// one)
    deployment = build_worker_deployment_spec("altlas-default", "default", "altlas", "abc12", worker_pod, {}, {})
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    addresses = [e["value"] for e in container["env"] if e["name"] == "DASK_SCHEDULER_ADDRESS"]
    assert addresses == ["tls://altlas-scheduler:8786"]
    for where, spec in [("scheduler", cluster["spec"]["scheduler"]["spec"]), ("worker", worker_pod)] + [
        (m["metadata"]["name"], m["spec"]["template"]["spec"]) for m in manifests.values() if m["kind"] == "Deployment"
    ]:
        tls = {v["name"]: v for v in spec["volumes"]}["tls"]["secret"]
        assert tls["optional"] is False, f"{where}: --tls needs the Secret"
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        config = load_config(REPO / "cluster.yaml", environ={k: v for k, v in env.items() if k != "ALTLAS_CONFIG"})
        assert config.security.identity == "tls", where
        if where == "worker":
            assert env["DASK_DISTRIBUTED__NANNY__PRELOAD"] == "scheduler_plugins.gate"  # the nanny's gate
        if spec["containers"][0]["args"][0] == "altlas-dask":  # gateway, console: clients with their certificate
            service = spec["containers"][0]["args"][1].replace("api", "gateway")
            assert config.security.client_cert == f"/certs/{service}.pem"
            assert spec["containers"][0]["args"][3] == "tls://altlas-scheduler:8786"


def test_image_pull_secrets_reach_every_pod():
    manifests = render(REPO / "cluster.yaml", RenderOptions(image_pull_secrets=("registry-a", "registry-b")))
    specs = [m["spec"]["template"]["spec"] for m in manifests.values() if m["kind"] == "Deployment"]
    for cluster in [m for m in manifests.values() if m["kind"] == "DaskCluster"]:
        validate_crd(cluster)
        specs += [cluster["spec"]["scheduler"]["spec"], cluster["spec"]["worker"]["spec"]]
    assert len(specs) == 4
    for spec in specs:
        assert spec["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
    assert all("imagePullSecrets" not in spec for _, spec in pods())  # none unless asked


def test_prometheus_rule_is_alerts_yml_and_its_jobs_are_the_scraped_ones():
    [rule] = of_kind("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((REPO / "deploy" / "alerts.yml").read_text())["groups"]
    relabelled = {
        r["replacement"]
        for monitor in of_kind("ServiceMonitor")
        for endpoint in monitor["spec"]["endpoints"]
        for r in endpoint.get("relabelings", [])
        if r["targetLabel"] == "job"
    }
    [scrape] = [m for m in of_kind("ConfigMap") if "scrape-configs.yml" in m["data"]]
    jobs = {j["job_name"] for j in yaml.safe_load(scrape["data"]["scrape-configs.yml"])["scrape_configs"]}
    used = {
        job
        for group in rule["spec"]["groups"]
        for alert in group["rules"]
        for job in re.findall(r'job="([^"]+)"', alert["expr"])
    }
    assert used == relabelled == jobs == {"altlas-dask-scheduler", "dcgm-exporter"}


def test_scale_down_deletes_the_pods_of_the_workers_it_retired():
    """The operator scales down by retiring Dask workers (scheduler /api/v1/retire_workers) and deleting the
    worker Deployments named like them. A one-GPU pod runs one `dask cuda worker` process named
    `--name $(DASK_WORKER_NAME)` (dask-cuda 26.10 appends `-<i>` only with several GPUs: `name if nprocs == 1`),
    and the operator sets DASK_WORKER_NAME to the Deployment's own name."""
    from dask_kubernetes.operator.controller.controller import build_worker_deployment_spec

    [cluster] = of_kind("DaskCluster")
    pod = cluster["spec"]["worker"]["spec"]
    [worker] = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1", "one GPU: dask-cuda starts one worker process"
    assert worker["args"][worker["args"].index("--name") + 1] == "$(DASK_WORKER_NAME)"
    deployment = build_worker_deployment_spec("altlas-default", "default", "altlas", "7f3a", pod, {}, {})
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    names = [e["value"] for e in container["env"] if e["name"] == "DASK_WORKER_NAME"]
    assert names == [deployment["metadata"]["name"]] == ["altlas-default-worker-7f3a"]  # the operator's naming
