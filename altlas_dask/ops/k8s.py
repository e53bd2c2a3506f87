"""``altlas-dask k8s render``: Kubernetes manifests for the Dask operator (dask-kubernetes).

The ``DaskCluster`` comes from ``dask_kubernetes.operator.make_cluster_spec`` (the operator's own
builder, offline), then gets the router preload on its scheduler and ``dask cuda worker`` with
``nvidia.com/gpu`` on its default worker group. Around it: a ``DaskAutoscaler``, the gateway and the
console as Deployments with Services, the config as a ConfigMap, a volume for the scheduler's
accounting database, the API-key database and TLS certificates from Secrets, and Prometheus scraping
(a ``ServiceMonitor`` per target, and the same as a plain scrape config) with alerts.yml as a
``PrometheusRule``. ``--tls`` uses the TLS Secret (Dask's ``--tls-*`` flags); ``--image-pull-secret`` adds
``imagePullSecrets``. Nothing here talks to a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from altlas_dask.config import AltlasConfig, ConfigError, load_config
from altlas_dask.ops.certs import NANNY_GATE

Manifest = dict[str, Any]

UID = 10001  # the image's user (deploy/docker/Dockerfile)
CONFIG_DIR = "/etc/altlas"
DATA_DIR = "/var/lib/altlas"
CERTS_DIR = "/certs"
KEYS_DIR = "/secrets/api-keys"
API_KEYS_SECRET = "altlas-api-keys"  # kubectl create secret generic altlas-api-keys --from-file=api_keys.sqlite=...
TLS_SECRET = "altlas-tls"  # issue 12 (mutual TLS): required with --tls, else mounted when it exists
# its files (altlas-dask certs init/issue, then kubectl create secret generic altlas-tls --from-file=DIR)
TLS_FILES = {"ca": "ca.pem", "node": "node.pem", "node_key": "node-key.pem"}  # + gateway.pem, console.pem, keys
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class K8sRenderError(ValueError):
    """The manifests cannot be rendered (the message says why)."""


NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")


@dataclass(frozen=True)
class RenderOptions:
    """What the command line chooses; everything else follows from the config."""

    # GPU nodes and their GPUs. Worker pods hold one GPU each (nodes x gpus_per_node pods), so a pod's one Dask
    # worker is named as the operator names the pod: its scale-down deletes the pods of the workers it retired
    # (dask-cuda names the workers of a pod with several GPUs <pod>-<i>, which match no pod).
    nodes: int = 2
    gpus_per_node: int = 4
    max_nodes: int | None = None  # DaskAutoscaler maximum (default: nodes)
    min_nodes: int = 1
    name: str = "altlas"
    namespace: str | None = None
    image: str = "altlas-dask:0.1.0"
    tls: bool = False  # mutual TLS from the altlas-tls Secret: Dask's --tls-* flags, identity: tls
    image_pull_secrets: tuple[str, ...] = ()  # Secrets of a private registry, on every pod

    def check(self) -> None:
        if not NAME.match(self.name):
            raise K8sRenderError(f"--name {self.name!r} must be a DNS label: lower-case letters, digits and '-'")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise K8sRenderError(f"--nodes ({self.nodes}) and --gpus-per-node ({self.gpus_per_node}) must be >= 1")
        if not 0 <= self.min_nodes <= self.maximum:
            raise K8sRenderError(f"--min-nodes {self.min_nodes} must be between 0 and --max-nodes {self.maximum}")
        if self.maximum < self.nodes:
            raise K8sRenderError(f"--max-nodes {self.maximum} is below --nodes {self.nodes}")
        for secret in self.image_pull_secrets:
            if not NAME.match(secret):
                raise K8sRenderError(f"--image-pull-secret {secret!r} must be a DNS label")

    @property
    def maximum(self) -> int:
        return self.nodes if self.max_nodes is None else self.max_nodes


def _meta(name: str, options: RenderOptions, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/name": "altlas-dask", "app.kubernetes.io/component": component},
    }
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def _pod(options: RenderOptions) -> dict[str, Any]:
    """What every pod spec carries: the image's non-root user, and the registry's pull secrets."""
    user = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID}
    pod: dict[str, Any] = {"securityContext": user}
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": secret} for secret in options.image_pull_secrets]
    return pod


def _scheduler_url(options: RenderOptions, host: str | None = None) -> str:
    return f"{'tls' if options.tls else 'tcp'}://{host or options.name + '-scheduler'}:8786"


def _tls_flags(options: RenderOptions) -> list[str]:
    """Dask's own TLS flags for the scheduler and the workers: the Secret's node certificate."""
    if not options.tls:
        return []
    return [
        *("--tls-ca-file", f"{CERTS_DIR}/{TLS_FILES['ca']}"),
        *("--tls-cert", f"{CERTS_DIR}/{TLS_FILES['node']}"),
        *("--tls-key", f"{CERTS_DIR}/{TLS_FILES['node_key']}"),
    ]


def _tls_env(options: RenderOptions, service: str | None = None) -> dict[str, str]:
    """cluster.yaml's security section for a pod: the node certificate, or a service's client certificate."""
    if not options.tls:
        return {}
    env = {"ALTLAS_SECURITY__IDENTITY": "tls", "ALTLAS_SECURITY__CA_FILE": f"{CERTS_DIR}/{TLS_FILES['ca']}"}
    if service is None:
        env["ALTLAS_SECURITY__NODE_CERT"] = f"{CERTS_DIR}/{TLS_FILES['node']}"
        env["ALTLAS_SECURITY__NODE_KEY"] = f"{CERTS_DIR}/{TLS_FILES['node_key']}"
        env["DASK_DISTRIBUTED__NANNY__PRELOAD"] = NANNY_GATE  # a worker's nanny answers only nodes
    else:
        env["ALTLAS_SECURITY__CLIENT_CERT"] = f"{CERTS_DIR}/{service}.pem"
        env["ALTLAS_SECURITY__CLIENT_KEY"] = f"{CERTS_DIR}/{service}-key.pem"
    return env


def _config_volume(options: RenderOptions) -> dict[str, Any]:
    return {"name": "config", "configMap": {"name": f"{options.name}-config"}}


def _tls_volume(options: RenderOptions) -> dict[str, Any]:
    """The certificates; required with --tls, else mounted when the Secret happens to exist."""
    return {"name": "tls", "secret": {"secretName": TLS_SECRET, "optional": not options.tls, "defaultMode": 0o440}}


def _mounts(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tls", "mountPath": CERTS_DIR, "readOnly": True},
        *extra,
    ]


def _env(**extra: str) -> list[dict[str, str]]:
    env = {"ALTLAS_CONFIG": f"{CONFIG_DIR}/cluster.yaml", **extra}
    return [{"name": k, "value": v} for k, v in env.items()]


def _probe(port: str, path: str, delay: int) -> dict[str, Any]:
    return {"httpGet": {"port": port, "path": path}, "initialDelaySeconds": delay, "periodSeconds": 20}


def dask_cluster(config: AltlasConfig, options: RenderOptions) -> Manifest:
    """The operator's ``DaskCluster``: router preload on the scheduler, ``dask cuda worker`` on GPU pods."""
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError as exc:
        raise K8sRenderError(f"k8s render needs dask-kubernetes ({exc}): pip install 'altlas-dask[k8s]'") from None

    threads = config.routing().max_concurrent_tasks_per_gpu
    spec = make_cluster_spec(
        name=options.name,
        image=options.image,
        n_workers=options.nodes * options.gpus_per_node,
        worker_command=f"dask cuda worker --nthreads {threads} --preload altlas_dask.worker",
    )
    spec["metadata"] = _meta(options.name, options, "dask-cluster")

    scheduler_pod = spec["spec"]["scheduler"]["spec"]
    [scheduler] = scheduler_pod["containers"]
    # the router, and the GPU-slot adaptive target the DaskAutoscaler reads (scheduler_plugins/autoscale.py)
    preloads = ["--preload", "scheduler_plugins.gpu_router", "--preload", "scheduler_plugins.autoscale"]
    protocol = ["--protocol", "tls"] if options.tls else []
    scheduler["args"] = ["dask", "scheduler", "--host", "0.0.0.0", *protocol, *_tls_flags(options), *preloads]
    scheduler["env"] = _env(
        ALTLAS_ACCOUNTING__DATABASE=f"{DATA_DIR}/altlas.sqlite",
        DASK_ALTLAS__GPUS_PER_POD="1",
        **_tls_env(options),
    )
    scheduler["volumeMounts"] = _mounts({"name": "data", "mountPath": DATA_DIR})
    scheduler["resources"] = {"requests": {"cpu": "2", "memory": "4Gi"}}
    scheduler_pod.update(_pod(options))
    scheduler_pod["volumes"] = [
        _config_volume(options),
        _tls_volume(options),
        {"name": "data", "persistentVolumeClaim": {"claimName": f"{options.name}-accounting"}},
    ]

    worker_pod = spec["spec"]["worker"]["spec"]
    [worker] = worker_pod["containers"]
    # the operator sets DASK_SCHEDULER_ADDRESS to tcp:// unless the pod names it: with TLS it must be tls://
    address = {"DASK_SCHEDULER_ADDRESS": _scheduler_url(options)} if options.tls else {}
    worker["args"] = [*worker["args"], *_tls_flags(options)]
    # each of the pod's workers (one per GPU) registers its /altlas/health URL: the probe checks them all
    worker["env"] = _env(ALTLAS_HEALTH_DIR="/tmp/altlas-health", **address, **_tls_env(options))
    worker["resources"] = {"limits": {"nvidia.com/gpu": "1"}}  # one GPU, one worker, named as its pod
    worker["volumeMounts"] = _mounts({"name": "dshm", "mountPath": "/dev/shm"})
    worker["livenessProbe"] = {
        "exec": {"command": ["python", "/usr/local/bin/altlas-healthcheck"]},
        "initialDelaySeconds": 120,
        "periodSeconds": 20,
        "timeoutSeconds": 15,
    }
    worker_pod.update(_pod(options))
    worker_pod["tolerations"] = [GPU_TOLERATION]
    worker_pod["volumes"] = [
        _config_volume(options),
        _tls_volume(options),
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    return spec


def autoscaler(options: RenderOptions) -> Manifest:
    """Scales the default worker group (one-GPU pods) between min and max nodes' worth of GPUs."""
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": _meta(options.name, options, "autoscaler"),
        "spec": {
            "cluster": options.name,
            "minimum": options.min_nodes * options.gpus_per_node,
            "maximum": options.maximum * options.gpus_per_node,
        },
    }


def config_map(options: RenderOptions, config_text: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{options.name}-config", options, "config"),
        "data": {"cluster.yaml": config_text},
    }


def accounting_claim(options: RenderOptions) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(f"{options.name}-accounting", options, "scheduler"),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def _service_deployment(
    options: RenderOptions, component: str, port: int, args: list[str], health: str, pod_extra: dict[str, Any]
) -> list[Manifest]:
    name = f"{options.name}-{component}"
    selector = {"app.kubernetes.io/name": "altlas-dask", "app.kubernetes.io/component": component}
    container = {
        "name": component,
        "image": options.image,
        "args": args,
        "env": _env(
            ALTLAS_HEALTH_URL=f"http://127.0.0.1:{port}{health}",
            **pod_extra.pop("env", {}),
            **_tls_env(options, component),
        ),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"port": "http", "path": health}, "periodSeconds": 5},
        "livenessProbe": _probe("http", health, 30),
        "volumeMounts": _mounts(*pod_extra.pop("mounts", [])),
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, options, component),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    **_pod(options),
                    "containers": [container],
                    "volumes": [_config_volume(options), _tls_volume(options), *pod_extra.pop("volumes", [])],
                    **pod_extra,
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, options, component),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [deployment, service]


def gateway(options: RenderOptions) -> list[Manifest]:
    """The REST gateway; its key file (accounting.api_keys) is copied from the Secret into a writable volume at
    start. It never opens the scheduler's accounting database."""
    scheduler = _scheduler_url(options)
    keys = f"{DATA_DIR}/api_keys.sqlite"
    copy_keys = {
        "name": "api-keys",
        "image": options.image,
        "command": ["python", "-c", f"import shutil; shutil.copy('{KEYS_DIR}/api_keys.sqlite', '{keys}')"],
        "volumeMounts": [
            {"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True},
            {"name": "data", "mountPath": DATA_DIR},
        ],
    }
    args = ["altlas-dask", "api", "--scheduler", scheduler, "--host", "0.0.0.0", "--port", "8000"]
    return _service_deployment(
        options,
        "gateway",
        8000,
        args,
        "/api/v1/health",
        {
            "initContainers": [copy_keys],
            "env": {"ALTLAS_ACCOUNTING__API_KEYS": keys},
            "mounts": [{"name": "data", "mountPath": DATA_DIR}],
            "volumes": [
                {"name": "api-keys", "secret": {"secretName": API_KEYS_SECRET, "defaultMode": 0o440}},
                {"name": "data", "emptyDir": {}},
            ],
        },
    )


def console(options: RenderOptions) -> list[Manifest]:
    scheduler = _scheduler_url(options)
    args = ["altlas-dask", "console", "--scheduler", scheduler, "--host", "0.0.0.0", "--port", "8501"]
    return _service_deployment(options, "console", 8501, args, "/_stcore/health", {})


# The scrape jobs alerts.yml names (up{job=...}); the plain scrape config and the ServiceMonitors use the same.
SCHEDULER_JOB = "altlas-dask-scheduler"
DCGM_JOB = "dcgm-exporter"
ALERTS = Path(__file__).with_name("alerts.yml")  # deploy/alerts.yml links here


def _job(name: str) -> list[dict[str, str]]:
    """A ServiceMonitor's job label is its Service's name unless relabelled: set the one the alerts use."""
    return [{"action": "replace", "targetLabel": "job", "replacement": name}]


def service_monitors(options: RenderOptions) -> list[Manifest]:
    """prometheus-operator ``ServiceMonitor``s: the scheduler's /metrics and NVIDIA's dcgm-exporter."""
    scheduler = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(f"{options.name}-scheduler", options, "monitoring"),
        "spec": {
            "selector": {"matchLabels": {"dask.org/cluster-name": options.name, "dask.org/component": "scheduler"}},
            "endpoints": [
                {"port": "http-dashboard", "path": "/metrics", "interval": "15s", "relabelings": _job(SCHEDULER_JOB)}
            ],
        },
    }
    dcgm = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(f"{options.name}-dcgm-exporter", options, "monitoring"),
        "spec": {
            # the GPU Operator's dcgm-exporter Service (namespace gpu-operator); adjust for a Helm-installed one
            "namespaceSelector": {"matchNames": ["gpu-operator"]},
            "selector": {"matchLabels": {"app": "nvidia-dcgm-exporter"}},
            "endpoints": [
                {"port": "gpu-metrics", "path": "/metrics", "interval": "15s", "relabelings": _job(DCGM_JOB)}
            ],
        },
    }
    return [scheduler, dcgm]


def scrape_config(options: RenderOptions) -> Manifest:
    """The same two targets for a Prometheus without the operator: a ConfigMap holding scrape jobs."""
    namespace = options.namespace or "default"
    jobs = {
        "scrape_configs": [
            {
                "job_name": SCHEDULER_JOB,
                "metrics_path": "/metrics",
                "static_configs": [
                    {
                        "targets": [f"{options.name}-scheduler.{namespace}.svc:8787"],
                        "labels": {"cluster": options.name},
                    }
                ],
            },
            {
                "job_name": DCGM_JOB,
                "kubernetes_sd_configs": [{"role": "endpoints", "namespaces": {"names": ["gpu-operator"]}}],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_service_label_app"],
                        "regex": "nvidia-dcgm-exporter",
                        "action": "keep",
                    },
                    {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "Hostname"},
                ],
            },
        ]
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{options.name}-prometheus-scrape", options, "monitoring"),
        "data": {"scrape-configs.yml": yaml.safe_dump(jobs, sort_keys=False)},
    }


def prometheus_rule(options: RenderOptions) -> Manifest:
    """prometheus-operator ``PrometheusRule``: the groups of alerts.yml (deploy/alerts.yml), unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _meta(f"{options.name}-alerts", options, "monitoring"),
        "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]},
    }


def render(config_path: str | Path | None, options: RenderOptions) -> dict[str, Manifest]:
    """File name -> manifest, in apply order. The config file is validated and shipped verbatim."""
    options.check()
    path = Path(config_path) if config_path else _default_config()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    config = load_config(path, environ={})
    manifests: list[Manifest] = [
        config_map(options, text),
        accounting_claim(options),
        dask_cluster(config, options),
        autoscaler(options),
        *gateway(options),
        *console(options),
        *service_monitors(options),
        prometheus_rule(options),
        scrape_config(options),
    ]
    out: dict[str, Manifest] = {}
    for index, manifest in enumerate(manifests):
        out[f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"] = manifest
    return out


def _default_config() -> Path:
    from altlas_dask.config import DEFAULT_CONFIG_PATH

    return DEFAULT_CONFIG_PATH


def kustomization(files: list[str]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": files}
    )


def write(manifests: dict[str, Manifest], out: Path, header: str) -> list[Path]:
    """Write one YAML file per manifest plus a kustomization.yaml (``kubectl apply -k DIR``)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, manifest in manifests.items():
        path = out / name
        path.write_text(f"# {header}\n" + yaml.safe_dump(manifest, sort_keys=False))
        written.append(path)
    path = out / "kustomization.yaml"
    path.write_text(f"# {header}\n" + kustomization(list(manifests)))
    return [*written, path]
