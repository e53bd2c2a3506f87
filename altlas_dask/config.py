"""Load and validate ``cluster.yaml``.

Precedence, lowest to highest (the same layering Dask's own config uses):
the file, then ``ALTLAS_<SECTION>__<KEY>=value`` environment variables
(``__`` nests, values parsed like Dask's ``interpret_value``), then
``--set section.key=value`` overrides from the CLI.
"""

from __future__ import annotations

import collections
import functools
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from altlas_dask.ranges import MAX_GPU_ID, MAX_QUOTA_VALUE

STRATEGIES = (
    "single_gpu",
    "round_robin",
    "least_loaded",
    "memory_optimized",
    "task_specific",
    "random",
    "hybrid",
    "earliest_finish",
)
#: A strategy name: one of STRATEGIES, or a name in ``gpu.multi_gpu.custom_strategies``.
StrategyName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
#: ``module:Class`` or ``module.Class`` of a custom strategy (see altlas_dask.scheduling.strategies).
ImportPath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")]
ENV_PREFIX = "ALTLAS_"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "cluster.yaml"  # package data (a link to the repo's file)


class ConfigError(ValueError):
    """cluster.yaml (or an override) is invalid; the message names key and value."""


def parse_gpu_ref(ref: str | int, *, where: str = "gpu") -> int:
    """``"gpu_1"``, ``"1"`` or ``1`` -> ``1``."""
    text = str(ref).strip().lower().removeprefix("gpu_").removeprefix("gpu-")
    if not text.isdigit():
        raise ValueError(f"{where}={ref!r} is not a GPU reference like 'gpu_0'")
    if len(text) > 5 or int(text) > MAX_GPU_ID:
        raise ValueError(f"{where}={ref!r} is not a GPU id (ids are 0..{MAX_GPU_ID})")
    return int(text)


GPU_PATTERN = re.compile(r"^[A-Za-z0-9 *?_.:/()\[\]-]{1,128}$")


def parse_gpu_selector(ref: str | int, *, where: str = "gpu") -> int | str:
    """A GPU by id (``1``, ``"gpu_1"``), by UUID (``"GPU-8f3c..."``, ``"MIG-..."``) or by name pattern
    (``"A100*"``, matched case-insensitively against the GPU's name)."""
    if isinstance(ref, bool):
        raise ValueError(f"{where}={ref!r} is not a GPU id, UUID or name pattern")
    if isinstance(ref, int):
        if not 0 <= ref <= MAX_GPU_ID:
            raise ValueError(f"{where}={ref!r} is not a GPU id (ids are 0..{MAX_GPU_ID})")
        return ref
    text = str(ref).strip()
    if re.fullmatch(r"(?i)(gpu[_-])?\d+", text):
        return parse_gpu_ref(text, where=where)
    if not GPU_PATTERN.match(text):
        raise ValueError(f"{where}={ref!r} is not a GPU id ('gpu_0'), UUID ('GPU-...') or name pattern ('A100*')")
    return text


@functools.lru_cache(maxsize=256)
def parse_compute_capability(value: str | float) -> tuple[int, int]:
    """``"8.6"`` -> ``(8, 6)``; raises ValueError on anything else."""
    major, dot, minor = str(value).partition(".")
    if not (major.isdigit() and (not dot or minor.isdigit())):
        raise ValueError(f"compute capability {value!r} is not like '8.0'")
    return int(major), int(minor or 0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Detection(_Strict):
    enabled: bool = True
    min_compute_capability: float = Field(7.0, ge=0.0, le=20.0)
    memory_threshold: float = Field(0.9, gt=0.0, le=1.0)
    utilization_threshold: float = Field(0.95, gt=0.0, le=1.0)
    max_temperature: float = Field(85.0, gt=0, le=120)
    health_check_interval: float = Field(30.0, gt=0)  # a GPU silent this long is unresponsive


class Selection(_Strict):
    default_strategy: StrategyName = "single_gpu"
    strategies: tuple[StrategyName, ...] = STRATEGIES


class Workload(_Strict):
    queue_processing_interval: float = Field(0.1, gt=0)
    max_concurrent_tasks_per_gpu: int = Field(4, ge=1, le=1024)
    batch_size: int = Field(8, ge=1)
    timeout: float = Field(300.0, gt=0)
    retry_count: int = Field(3, ge=0, le=100)


#: gpu.multi_gpu.prefetch_depth's default (docs/design.md "Pre-placement"; bench/RESULTS.md, issue 11 item 6).
PREFETCH_DEPTH = 0


class MultiGpu(_Strict):
    enabled: bool = True
    default_strategy: StrategyName = "earliest_finish"
    strategies: tuple[StrategyName, ...] = STRATEGIES
    batch_split: bool = True
    min_batch_size_per_gpu: int = Field(4, ge=1)
    max_concurrent_tasks_per_gpu: int = Field(8, ge=1, le=1024)
    # next tasks placed on a GPU's worker beyond its running ones (they start there as soon as a slot frees)
    prefetch_depth: int = Field(PREFETCH_DEPTH, ge=0, le=1024)
    memory_threshold: float = Field(0.9, gt=0.0, le=1.0)
    utilization_threshold: float = Field(0.95, gt=0.0, le=1.0)
    task_specific_mappings: dict[str, str] = Field(default_factory=dict)
    custom_strategies: dict[StrategyName, ImportPath] = Field(default_factory=dict)
    data_locality: bool = True  # earliest_finish weighs where a task's inputs are (Dask's who_has / nbytes)
    # a task a strategy holds back for a better GPU (late binding, its inputs' GPU) waits at most this x its
    # expected seconds; then it takes the best GPU with room (0: never held)
    max_hold_factor: float = Field(2.0, ge=0, le=1000)
    # gpu_options.affinity: a task goes to a GPU that served its key lately while that GPU's tasks stay within
    # this x the mean over the GPUs with room (consistent hashing with bounded loads); 0: affinity ignored
    affinity_load_factor: float = Field(1.25, ge=0, le=100)
    # what moving inputs between workers costs (GB/s); 0.1: Dask's own estimate (distributed.scheduler.bandwidth)
    transfer_gb_per_s: float = Field(0.1, gt=0, le=10_000)

    @field_validator("task_specific_mappings")
    @classmethod
    def _gpu_refs(cls, mapping: dict[str, str]) -> dict[str, str]:
        for task_type, ref in mapping.items():
            parse_gpu_selector(ref, where=f"task_specific_mappings.{task_type}")
        return mapping


class Health(_Strict):
    """How the router judges a GPU from the outcomes of the tasks it ran (see docs/design.md "Health")."""

    window: int = Field(20, ge=1, le=10_000)  # the last N task attempts on a GPU count
    min_samples: int = Field(10, ge=1, le=10_000)  # attempts needed before the error rate can make it critical
    warning_error_rate: float = Field(0.05, ge=0.0, le=1.0)
    critical_error_rate: float = Field(0.5, gt=0.0, le=1.0)
    recovery_seconds: float = Field(60.0, gt=0)  # a critical GPU is tried again after this long
    hung_task_factor: float = Field(10.0, gt=1)  # a task running this many times its expected time ...
    hung_task_min_seconds: float = Field(60.0, gt=0)  # ... and at least this long marks its GPU unresponsive


class Gpu(_Strict):
    enabled: bool = True
    detection: Detection = Detection()
    selection: Selection = Selection()
    workload: Workload = Workload()
    multi_gpu: MultiGpu = MultiGpu()
    health: Health = Health()


#: Virtual GPUs the replay simulator models (issue 24: the core decides in bounded time at this size).
MAX_SIMULATED_GPUS = 4096
#: Virtual GPUs ``up`` starts on one machine: each is a Dask worker process.
MAX_LOCAL_WORKERS = 256


class Cluster(_Strict):
    """Where the Dask scheduler and dashboard listen; ``simulate`` forces the virtual pool; ``protocol``: Dask's
    comms (``ucx``: dask-cuda's UCX, NVLink between the GPUs of a node; real GPUs only)."""

    scheduler_address: str = "127.0.0.1:8786"
    dashboard_address: str = "127.0.0.1:8787"
    simulate: int | None = Field(None, ge=1, le=MAX_LOCAL_WORKERS)
    work_stealing: bool = False
    protocol: Literal["tcp", "ucx"] = "tcp"
    enable_nvlink: bool | None = None  # with ucx: force NVLink on or off; null: UCX picks its transports

    def connect_address(self) -> str:
        """``scheduler_address`` with the protocol's scheme (clients of a UCX cluster must speak UCX too)."""
        address = self.scheduler_address
        return address if "://" in address or self.protocol == "tcp" else f"{self.protocol}://{address}"


class SimulatedGpuSpec(_Strict):
    name: str = "Simulated A100 40GB"
    memory_mb: int = Field(40960, gt=0)
    compute_capability: str = "8.0"
    speed_gflops: float = Field(1000.0, gt=0)
    power_limit_w: float = Field(400.0, gt=0)
    idle_power_w: float = Field(50.0, ge=0)
    idle_temperature_c: float = Field(35.0, ge=0, le=120)
    max_load_temperature_c: float = Field(75.0, ge=0, le=120)
    count: int = Field(1, ge=1, le=MAX_SIMULATED_GPUS)

    @field_validator("compute_capability")
    @classmethod
    def _cc(cls, value: str) -> str:
        parse_compute_capability(value)
        return value


class FaultSpec(_Strict):
    """A fault to inject into one virtual GPU, as a real one would show it."""

    gpu: int = Field(ge=0)
    kind: Literal["lost", "error_rate", "thermal_throttle"]
    at_s: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0.0, le=1.0)


class SimLatency(_Strict):
    """The Dask path around a GPU in the replay simulator, in seconds (docs/replay.md "The model").

    Defaults: their sum is bench/overhead.py's one-task round trip through the router on the simulated cluster
    (12.6 ms median), split as measured by bench/strategies.py on a quiet machine (submit -> start on the worker
    6-10 ms, kernel end -> the client's callback 2-3 ms). The round trip a freed slot waits for (no
    ``gpu.multi_gpu.prefetch_depth``) is ``report_s + dispatch_s``. On a loaded machine all of them grow.
    """

    submit_s: float = Field(0.004, ge=0, le=60)  # client submit -> the scheduler's update_graph
    dispatch_s: float = Field(0.004, ge=0, le=60)  # the router places a task -> it reaches its worker
    report_s: float = Field(0.002, ge=0, le=60)  # the kernel ends -> the scheduler hears it
    notify_s: float = Field(0.002, ge=0, le=60)  # the scheduler -> the client's done-callback


class Simulation(_Strict):
    """The virtual pool: modelled in the replay simulator (up to MAX_SIMULATED_GPUS GPUs in all), or started as
    one Dask worker process per GPU by ``up`` / ``start_cluster`` (up to MAX_LOCAL_WORKERS of them)."""

    gpus: tuple[SimulatedGpuSpec, ...] = (SimulatedGpuSpec(count=4),)
    faults: tuple[FaultSpec, ...] = ()
    seed: int = 0
    latency: SimLatency = SimLatency()
    # affinity keys a GPU keeps warm (LRU), in the replay and on GPU workers: prefixes kept in host memory too,
    # as Mooncake does
    affinity_cache_keys: int = Field(1000, ge=0, le=1_000_000)
    # a simulated GPU worker's cold load: seconds the device is held to load the state of an affinity key it
    # does not hold (the shipped model's weights for the key), before the task runs; a warm task pays nothing
    affinity_load_s: float = Field(0.05, ge=0, le=600)

    @field_validator("gpus")
    @classmethod
    def _pool_size(cls, gpus: tuple[SimulatedGpuSpec, ...]) -> tuple[SimulatedGpuSpec, ...]:
        total = sum(g.count for g in gpus)
        if total > MAX_SIMULATED_GPUS:
            raise ValueError(f"the pool has {total} GPUs in all (sum of count); at most {MAX_SIMULATED_GPUS}")
        return gpus

    def expanded(self) -> list[SimulatedGpuSpec]:
        """One spec per virtual GPU (``count`` unrolled), in index order."""
        return [spec for spec in self.gpus for _ in range(spec.count)]


USER_NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,128}$"


class QuotaLimits(_Strict):
    """One user's limits (seed 001 sections 6.3.4 and 6.3.6)."""

    concurrent_requests: int = Field(1024, ge=1, le=100_000)  # running at once; more wait their turn
    gpu_time_minutes: float = Field(14_400.0, gt=0, le=MAX_QUOTA_VALUE)  # GPU time per UTC day, from run time
    priority_requests: int = Field(256, ge=0, le=100_000)  # priority 4-5 tasks submitted and not finished
    requests_per_minute: int = Field(60_000, ge=1, le=MAX_QUOTA_VALUE)  # sliding 60 s window
    requests_per_day: int = Field(5_000_000, ge=1, le=MAX_QUOTA_VALUE)  # per UTC day
    weight: float = Field(1.0, gt=0, le=1000)  # fair-share weight among waiting work of equal priority


class QuotaOverride(_Strict):
    """Per-user changes to the defaults: only the keys given."""

    concurrent_requests: int | None = Field(None, ge=1, le=100_000)
    gpu_time_minutes: float | None = Field(None, gt=0, le=MAX_QUOTA_VALUE)
    priority_requests: int | None = Field(None, ge=0, le=100_000)
    requests_per_minute: int | None = Field(None, ge=1, le=MAX_QUOTA_VALUE)
    requests_per_day: int | None = Field(None, ge=1, le=MAX_QUOTA_VALUE)
    weight: float | None = Field(None, gt=0, le=1000)


class Quotas(_Strict):
    enabled: bool = True
    fair_share: bool = True
    defaults: QuotaLimits = QuotaLimits()
    users: dict[str, QuotaOverride] = Field(default_factory=dict)
    admins: tuple[str, ...] = ("admin",)

    @field_validator("users")
    @classmethod
    def _user_names(cls, users: dict[str, QuotaOverride]) -> dict[str, QuotaOverride]:
        import re

        for name in users:
            if not re.match(USER_NAME_PATTERN, name):
                raise ValueError(f"user name {name!r} may only hold letters, digits and _ . @ -")
        return users


class Accounting(_Strict):
    """The embedded SQLite database of usage, quota overrides and task records (the scheduler's), and the API
    keys' own file (the gateway's, the console's and ``altlas-dask keys``)."""

    database: str = "altlas.sqlite"  # resolved against the state directory (``home``); ":memory:" keeps nothing
    api_keys: str = ""  # resolved against ``home``; empty: ``api_keys.sqlite`` beside ``database``
    flush_interval: float = Field(0.2, gt=0, le=60)  # seconds between batched writes (off the event loop)
    recent_records: int = Field(1000, ge=0, le=1_000_000)  # final records kept in memory; older: from the database


class Security(_Strict):
    """Who is who on the Dask comms (docs/security.md). ``none``: open mode, names are self-declared;
    ``tls``: mutual TLS everywhere, a client's user name is its certificate's common name."""

    identity: Literal["none", "tls"] = "none"
    ca_file: str | None = None  # the cluster CA (altlas-dask certs init DIR -> DIR/ca.pem)
    node_cert: str | None = None  # scheduler and workers (certs issue DIR --node NAME)
    node_key: str | None = None
    client_cert: str | None = None  # this process's identity as a client (a user or a service)
    client_key: str | None = None
    delegates: tuple[str, ...] = ("gateway", "console")  # services that act for users they authenticated

    @field_validator("delegates")
    @classmethod
    def _delegate_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        import re

        for name in names:
            if not re.match(USER_NAME_PATTERN, name):
                raise ValueError(f"delegate name {name!r} may only hold letters, digits and _ . @ -")
        return names


class Metrics(_Strict):
    """Prometheus label values stay bounded (deploy/README.md "Metrics labels")."""

    all_user_labels: bool = False  # true: a `user` label per user name; false: configured users, others `other`


# -- the `test:` section (seed 003): what `altlas-dask selftest` runs ------------------------------------------


class SelftestToggle(_Strict):
    enabled: bool = True


class SelftestWork(_Strict):
    """One kind of task: a dense layer ``input_size -> output_size`` applied for ``duration`` seconds."""

    enabled: bool = True
    input_size: int = Field(1024, ge=1, le=1_048_576)
    output_size: int = Field(1024, ge=1, le=1_048_576)
    duration: float = Field(5.0, ge=0, le=86_400)


class SelftestConcurrent(SelftestWork):
    concurrent_tasks: int = Field(4, ge=1, le=10_000)
    task_count: int = Field(20, ge=1, le=1_000_000)
    duration: float = Field(2.0, ge=0, le=86_400)


class SelftestScenario(_Strict):
    name: str = Field(min_length=1, max_length=128)
    input_size: int = Field(ge=1, le=1_048_576)
    output_size: int = Field(ge=1, le=1_048_576)
    duration: float = Field(ge=0, le=86_400)


class SelftestErrorScenario(SelftestScenario):
    name: Literal["gpu_overload", "task_timeout"]
    concurrent_tasks: int = Field(1, ge=1, le=10_000)


class SelftestPerformance(_Strict):
    enabled: bool = True
    scenarios: tuple[SelftestScenario, ...] = (
        SelftestScenario(name="small_model", input_size=1024, output_size=1024, duration=5),
        SelftestScenario(name="medium_model", input_size=4096, output_size=4096, duration=5),
        SelftestScenario(name="large_model", input_size=8192, output_size=8192, duration=5),
    )


class SelftestErrorHandling(_Strict):
    enabled: bool = True
    scenarios: tuple[SelftestErrorScenario, ...] = (
        SelftestErrorScenario(
            name="gpu_overload", concurrent_tasks=10, input_size=16384, output_size=16384, duration=10
        ),
        SelftestErrorScenario(name="task_timeout", input_size=8192, output_size=8192, duration=310),
    )


class SelftestSuite(_Strict):
    """Seed 003's test settings, key for key: the scenarios of ``altlas-dask selftest``."""

    detection: SelftestToggle = SelftestToggle()
    basic_functionality: SelftestWork = SelftestWork()
    concurrent_processing: SelftestConcurrent = SelftestConcurrent()
    performance: SelftestPerformance = SelftestPerformance()
    error_handling: SelftestErrorHandling = SelftestErrorHandling()


class ModelBatching(_Strict):
    """Dynamic batching of one model's requests: at the gateway (``POST /predict``, altlas_dask/api/request_batching.py)
    and on the GPU worker for tasks submitted one by one (altlas_dask/worker/batching.py)."""

    enabled: bool = True
    max_batch_size: int = Field(16, ge=1, le=1024)  # requests in one batch at most
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)  # how long a request may wait for others to join its batch


class Callbacks(_Strict):
    """``POST /route`` ``callback_url``: signed deliveries of the final record, only to these hosts."""

    allowed_hosts: tuple[str, ...] = ()  # host names or addresses (a port may follow: "hooks.example:8443")
    max_attempts: int = Field(5, ge=1, le=20)
    backoff_s: float = Field(0.5, gt=0, le=60)  # first retry after this, doubling
    timeout_s: float = Field(5.0, gt=0, le=60)


class Serving(_Strict):
    batching: dict[str, ModelBatching] = Field(default_factory=lambda: {"generate": ModelBatching()})
    callbacks: Callbacks = Callbacks()


HOME_ENV = "ALTLAS_HOME"


def state_home(configured: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The state directory (accounting database, API keys, logs of ``up``), absolute.

    ``configured`` (cluster.yaml ``home``), else ``$ALTLAS_HOME``, else the platform's user data
    directory (e.g. ``~/.local/share/altlas-dask``): the same wherever a command runs.
    """
    environ = os.environ if environ is None else environ
    chosen = configured or environ.get(HOME_ENV)
    if not chosen:
        import platformdirs

        chosen = platformdirs.user_data_dir("altlas-dask", appauthor=False)
    return Path(chosen).expanduser().resolve()


def _database_in(home: Path, database: str) -> str:
    """``accounting.database`` made absolute: a relative path lies in the state directory."""
    if database == ":memory:" or database.startswith("file:"):
        return database
    path = Path(database).expanduser()
    return str(path if path.is_absolute() else home / path)


def _keys_beside(database: str) -> str:
    """The API key file's default: ``api_keys.sqlite`` in the accounting database's folder (``:memory:`` for a
    database in memory, which the key store refuses with a message naming ``accounting.api_keys``)."""
    if database == ":memory:" or database.startswith("file:"):
        return database
    return str(Path(database).with_name("api_keys.sqlite"))


class AltlasConfig(_Strict):
    home: str | None = None  # the state directory; resolved by state_home() (always absolute once validated)
    gpu: Gpu = Gpu()
    cluster: Cluster = Cluster()
    simulation: Simulation = Simulation()
    quotas: Quotas = Quotas()
    accounting: Accounting = Accounting()
    test: SelftestSuite = SelftestSuite()
    serving: Serving = Serving()
    security: Security = Security()
    metrics: Metrics = Metrics()

    @model_validator(mode="before")
    @classmethod
    def _state_paths(cls, data: Any) -> Any:
        """Resolve ``home`` and put a relative ``accounting.database`` inside it."""
        if not isinstance(data, Mapping) or not isinstance(data.get("home"), str | os.PathLike | None):
            return data
        home = state_home(data.get("home"))
        accounting = data.get("accounting")
        if isinstance(accounting, Accounting):
            accounting = accounting.model_dump()
        if isinstance(accounting, Mapping) and not isinstance(accounting.get("database", ""), str):
            return {**data, "home": str(home)}  # a bad database value: its own validation error names it
        accounting = dict(accounting or {}) if isinstance(accounting, Mapping | None) else accounting
        if isinstance(accounting, dict):
            database = accounting["database"] = _database_in(home, accounting.get("database") or Accounting().database)
            if isinstance(accounting.get("api_keys", ""), str):
                accounting["api_keys"] = _database_in(home, accounting.get("api_keys") or _keys_beside(database))
        return {**data, "home": str(home), "accounting": accounting}

    @model_validator(mode="after")
    def _protocol_fits(self) -> AltlasConfig:
        """``cluster.protocol: ucx`` needs real GPUs (dask-cuda) and cannot carry mutual TLS."""
        c = self.cluster
        if c.enable_nvlink is not None and c.protocol != "ucx":
            raise ValueError(
                f"cluster.enable_nvlink={c.enable_nvlink!r} needs cluster.protocol: ucx (got {c.protocol!r})"
            )
        if c.protocol != "ucx":
            return self
        if c.simulate is not None:
            raise ValueError(
                f"cluster.protocol='ucx' needs real GPUs (dask-cuda), but cluster.simulate={c.simulate} forces the "
                "simulated pool; use cluster.protocol: tcp"
            )
        if not (self.gpu.enabled and self.gpu.detection.enabled):
            raise ValueError(
                "cluster.protocol='ucx' needs real GPUs (dask-cuda), but gpu.enabled / gpu.detection.enabled is "
                "false, so the cluster always runs on the simulated pool; use cluster.protocol: tcp"
            )
        if self.security.identity == "tls":
            raise ValueError(
                "cluster.protocol='ucx' cannot carry security.identity='tls' (UCX has no TLS); use cluster.protocol: "
                "tcp for mutual TLS"
            )
        return self

    @model_validator(mode="after")
    def _default_strategy_enabled(self) -> AltlasConfig:
        known = (*STRATEGIES, *self.gpu.multi_gpu.custom_strategies)
        for section in ("selection", "multi_gpu"):
            block = getattr(self.gpu, section)
            for name in block.strategies:
                if name not in known:
                    raise ValueError(
                        f"gpu.{section}.strategies: unknown strategy {name!r}; built in: {', '.join(STRATEGIES)}"
                        " (add your own in gpu.multi_gpu.custom_strategies)"
                    )
            if block.default_strategy not in block.strategies:
                raise ValueError(
                    f"gpu.{section}.default_strategy={block.default_strategy!r} is not in "
                    f"gpu.{section}.strategies {list(block.strategies)}"
                )
        return self

    def routing(self) -> RoutingPolicy:
        """The effective routing settings (see docs/configuration.md)."""
        g = self.gpu
        multi = g.multi_gpu.enabled
        return RoutingPolicy(
            default_strategy=g.multi_gpu.default_strategy if multi else g.selection.default_strategy,
            allowed_strategies=g.multi_gpu.strategies if multi else g.selection.strategies,
            max_concurrent_tasks_per_gpu=(
                g.multi_gpu.max_concurrent_tasks_per_gpu if multi else g.workload.max_concurrent_tasks_per_gpu
            ),
            prefetch_depth=g.multi_gpu.prefetch_depth if multi else 0,
            memory_threshold=g.multi_gpu.memory_threshold if multi else g.detection.memory_threshold,
            utilization_threshold=(g.multi_gpu.utilization_threshold if multi else g.detection.utilization_threshold),
            max_temperature=g.detection.max_temperature,
            min_compute_capability=g.detection.min_compute_capability,
            batch_split=g.multi_gpu.batch_split and multi,
            min_batch_size_per_gpu=g.multi_gpu.min_batch_size_per_gpu,
            task_specific_mappings={
                k: parse_gpu_selector(v, where=k) for k, v in g.multi_gpu.task_specific_mappings.items()
            },
            timeout=g.workload.timeout,
            retry_count=g.workload.retry_count,
            custom_strategies=g.multi_gpu.custom_strategies,
            health=g.health,
            unresponsive_after=g.detection.health_check_interval,
            data_locality=g.multi_gpu.data_locality,
            transfer_bytes_per_s=g.multi_gpu.transfer_gb_per_s * 1e9,
            max_hold_factor=g.multi_gpu.max_hold_factor,
            affinity_load_factor=g.multi_gpu.affinity_load_factor,
        )


class RoutingPolicy(_Strict):
    """What the router needs, resolved from the overlapping seed 003/004 keys."""

    default_strategy: StrategyName
    allowed_strategies: tuple[StrategyName, ...]
    max_concurrent_tasks_per_gpu: int
    memory_threshold: float
    prefetch_depth: int = 0  # tasks placed on a GPU beyond its max_concurrent_tasks_per_gpu running ones
    utilization_threshold: float
    max_temperature: float
    min_compute_capability: float
    batch_split: bool
    min_batch_size_per_gpu: int
    task_specific_mappings: dict[str, int | str]  # GPU id, UUID or name pattern
    timeout: float
    retry_count: int
    custom_strategies: dict[str, str] = Field(default_factory=dict)
    health: Health = Health()
    unresponsive_after: float = 10.0
    data_locality: bool = True  # strategies weigh where a task's inputs are
    transfer_bytes_per_s: float = 1e8  # the cost of moving inputs between workers
    max_hold_factor: float = 2.0  # a held task waits at most this x its expected seconds
    affinity_load_factor: float = 1.25  # an affinity GPU is preferred up to this x the mean load (0: never)


@functools.lru_cache(maxsize=256)
def meets_compute_capability(capability: str, minimum: float | str) -> bool:
    """``meets_compute_capability("8.6", 7.0)`` -> True."""
    return parse_compute_capability(capability) >= parse_compute_capability(minimum)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``ALTLAS_GPU__MULTI_GPU__DEFAULT_STRATEGY=hybrid`` -> nested dict."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_path(tree, dotted, _interpret(raw))
    return tree


def _interpret(raw: str) -> Any:
    """An environment value the way Dask's config reads it (imported late: the scheduling core imports
    this module and must not pull in Dask)."""
    import dask.config

    return dask.config.interpret_value(raw)


def _scalar_or_yaml(raw: str) -> Any:
    """YAML for values; a string like ``:memory:`` stays a string unless it is a ``[...]``/``{...}`` collection."""
    value = yaml.safe_load(raw)
    if isinstance(value, dict | list) and not raw.lstrip().startswith(("[", "{")):
        return raw
    return value


def cli_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """``["gpu.multi_gpu.default_strategy=hybrid"]`` -> nested dict."""
    tree: dict[str, Any] = {}
    for item in assignments:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. gpu.multi_gpu.default_strategy=hybrid)")
        try:
            value = _scalar_or_yaml(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {key.strip()}: {raw!r} is not a YAML value ({problem})") from None
        _set_path(tree, key.strip(), value)
    return tree


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<top level>"
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r} (value {value!r})")
        elif not item["loc"]:  # a cross-key check: its message names the keys; the input is the whole config
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg} (got {value!r})")
    return "invalid configuration: " + "; ".join(lines)


def build_config(data: Mapping[str, Any] | None = None) -> AltlasConfig:
    """Validate a mapping; raise :class:`ConfigError` naming each bad key and value."""
    try:
        return AltlasConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> AltlasConfig:
    """Read ``cluster.yaml`` (default: ``$ALTLAS_CONFIG``, else the one shipped in the package), apply overrides.

    ``config_source(result)`` names the file read (or says none was).
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get("ALTLAS_CONFIG") or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        data = loaded or {}
    import dask.config

    home = {"home": environ[HOME_ENV]} if environ.get(HOME_ENV) else {}  # above the file, below --set
    data = dask.config.merge(data, home, env_overrides(environ), cli_overrides(overrides))
    config = build_config(data)
    _SOURCES.append((config, str(Path(path).resolve()) if path is not None else None))
    return config


# (config, file) of the last configs loaded: kept apart so a config's equality stays that of its values
_SOURCES: collections.deque[tuple[AltlasConfig, str | None]] = collections.deque(maxlen=64)


def config_source(config: AltlasConfig) -> str:
    """The file ``config`` was loaded from, for log lines (``"built-in defaults"`` when none is known)."""
    found = next((source for loaded, source in reversed(_SOURCES) if loaded is config), None)
    return found or "built-in defaults (no cluster.yaml)"
