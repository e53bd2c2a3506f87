"""Real GPUs through NVML (the ``pynvml`` module of nvidia-ml-py), the way ``distributed.diagnostics.nvml`` reads them.

* One initialisation per process (re-done after a fork), with a state the rest of the code can ask:
  :func:`nvml_status` -> :class:`NvmlStatus`. The ``distributed.diagnostics.nvml`` setting turns it off.
* Every query tolerates ``NVMLError_NotSupported``: the field is *unknown* (listed in
  ``GpuState.unknown``, its number a neutral placeholder), the GPU is not failed. Any other NVML error
  (GPU lost, driver gone) propagates: the worker reports that GPU as failed.
* A GPU in MIG mode is enumerated as its MIG slices, each a schedulable device with its own ``MIG-`` UUID.
* ``CUDA_VISIBLE_DEVICES`` entries may be indices, ``GPU-`` UUIDs or ``MIG-`` ids (unique prefixes too).

Each schedulable device gets a short id: its position in this node's enumeration (NVML index order,
MIG slices in slice order), so it is the same after a worker restart. Without MIG it is the NVML index.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType
from typing import Any, TypeVar

import dask.config
import pynvml

from altlas_dask.config import meets_compute_capability
from altlas_dask.gpus.errors import GpuUnavailableError
from altlas_dask.gpus.state import GpuState, classify_health

logger = logging.getLogger(__name__)
MIB = 1024 * 1024
DASK_NVML_SETTING = "distributed.diagnostics.nvml"
T = TypeVar("T")


class NvmlStatus(StrEnum):
    """What NVML can do in this process."""

    OK = "ok"
    """Initialised, and at least one device is present."""
    NO_LIBRARY = "no library"
    """``nvmlInit`` failed: no NVML library, no driver loaded, or no permission."""
    NO_DEVICES = "no devices"
    """Initialised, but the driver reports no device."""
    DISABLED_BY_CONFIG = "disabled by config"
    """The Dask setting ``distributed.diagnostics.nvml`` is false: NVML is never initialised."""


@dataclass
class _Init:
    pid: int
    status: NvmlStatus
    detail: str = ""
    error: BaseException | None = None


_INITS: weakref.WeakKeyDictionary[ModuleType, _Init] = weakref.WeakKeyDictionary()  # module -> its init here


def _initialise(nvml: ModuleType) -> _Init:
    pid = os.getpid()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return _Init(pid, NvmlStatus.NO_LIBRARY, f"NVML is not usable here ({exc})", exc)
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        return _Init(pid, NvmlStatus.NO_LIBRARY, f"NVML is not usable here ({exc})", exc)
    if count == 0:
        return _Init(pid, NvmlStatus.NO_DEVICES, "NVML found no GPU")
    return _Init(pid, NvmlStatus.OK)


def _init_once(nvml: ModuleType) -> _Init:
    if not dask.config.get(DASK_NVML_SETTING, True):
        detail = f"NVML is disabled by the Dask setting {DASK_NVML_SETTING}"
        return _Init(os.getpid(), NvmlStatus.DISABLED_BY_CONFIG, detail)
    init = _INITS.get(nvml)
    if init is None or init.pid != os.getpid():  # first use, or a forked child: initialise here
        init = _INITS[nvml] = _initialise(nvml)
    return init


def nvml_status(nvml: ModuleType = pynvml) -> NvmlStatus:
    """This process's NVML state (initialises NVML on the first call)."""
    return _init_once(nvml).status


def parse_visible_device(entry: str | int) -> int | str:
    """One ``CUDA_VISIBLE_DEVICES`` entry: an index (int), or a ``GPU-``/``MIG-`` UUID (str)."""
    text = str(entry).strip()
    if text.isdigit():
        return int(text)
    if text.startswith(("GPU-", "MIG-")):
        return text
    raise ValueError(
        f"CUDA_VISIBLE_DEVICES entry {text!r} is neither a device index nor a UUID starting with 'GPU-' or 'MIG-'"
    )


def parse_visible_devices(value: str | None) -> list[int | str]:
    """``"0,GPU-ab12,MIG-cd34"`` -> ``[0, "GPU-ab12", "MIG-cd34"]``; empty or unset -> ``[]``."""
    if not value or not value.strip():
        return []
    return [parse_visible_device(item) for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class NvmlDevice:
    """One schedulable device: a whole GPU, or one MIG slice of a GPU in MIG mode."""

    id: int  # short id: position in this node's enumeration
    nvml_index: int  # index of the physical GPU
    mig_index: int | None
    uuid: str
    handle: Any
    parent_handle: Any


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlInventory:
    """Every schedulable NVIDIA device on this node (MIG slices included), as :class:`GpuState`.

    Raises :class:`GpuUnavailableError` (one type, whatever NVML said) when NVML is not usable
    (:func:`nvml_status` is not ``ok``) or no device passes ``min_compute_capability``.
    """

    def __init__(
        self, *, min_compute_capability: float = 0.0, max_temperature: float = 85.0, nvml: ModuleType = pynvml
    ) -> None:
        self.nvml = nvml
        self.min_compute_capability = min_compute_capability
        self.max_temperature = max_temperature
        self._started = time.monotonic()
        init = _init_once(nvml)
        self.status = init.status
        if init.status is not NvmlStatus.OK:
            raise GpuUnavailableError(init.detail) from init.error
        self.devices = self._enumerate()
        self.count = len(self.devices)

    # -- enumeration ------------------------------------------------------------------------
    def _mig_enabled(self, handle: Any) -> bool:
        nv = self.nvml
        if not hasattr(nv, "nvmlDeviceGetMigMode"):
            return False
        try:
            current, _pending = nv.nvmlDeviceGetMigMode(handle)
        except nv.NVMLError_NotSupported:
            return False
        return current == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1)

    def _enumerate(self) -> list[NvmlDevice]:
        nv = self.nvml
        devices: list[NvmlDevice] = []
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            if not self._mig_enabled(handle):
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
                devices.append(NvmlDevice(len(devices), index, None, uuid, handle, handle))
                continue
            for mig in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig_handle = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig)
                except nv.NVMLError_NotFound:
                    continue  # no MIG slice with that index
                uuid = _text(nv.nvmlDeviceGetUUID(mig_handle))
                devices.append(NvmlDevice(len(devices), index, mig, uuid, mig_handle, handle))
        return devices

    def device(self, ref: int | str) -> NvmlDevice:
        """A device by short id (int) or by UUID (``GPU-``/``MIG-``; a unique prefix is enough)."""
        if isinstance(ref, int):
            if not 0 <= ref < len(self.devices):
                raise GpuUnavailableError(f"no GPU with id {ref} on this node (ids 0..{len(self.devices) - 1})")
            return self.devices[ref]
        matches = [d for d in self.devices if d.uuid == ref] or [d for d in self.devices if d.uuid.startswith(ref)]
        if len(matches) != 1:
            found = "no device" if not matches else f"{len(matches)} devices"
            raise GpuUnavailableError(f"UUID {ref!r} matches {found} on this node")
        return matches[0]

    def visible(self, cuda_visible_devices: str | None) -> list[NvmlDevice]:
        """The devices ``CUDA_VISIBLE_DEVICES`` exposes, in its order (unset: all of them).

        An index names a physical GPU: its whole device, or its first MIG slice when in MIG mode.
        """
        entries = parse_visible_devices(cuda_visible_devices)
        if not entries:
            return list(self.devices)
        found = []
        for entry in entries:
            if isinstance(entry, int):
                candidates = [d for d in self.devices if d.nvml_index == entry]
                if not candidates:
                    raise GpuUnavailableError(f"CUDA_VISIBLE_DEVICES names GPU index {entry}, which NVML does not see")
                found.append(candidates[0])
            else:
                found.append(self.device(entry))
        return found

    def indices(self) -> list[int]:
        """Short ids of the devices whose compute capability meets the minimum."""
        keep = [d.id for d in self.devices if meets_compute_capability(self._cc(d), self.min_compute_capability)]
        if not keep:
            raise GpuUnavailableError(
                f"no GPU has compute capability >= {self.min_compute_capability} (gpu.detection.min_compute_capability)"
            )
        return keep

    def gpus(self) -> list[GpuState]:
        return [self.state(i) for i in self.indices()]

    # -- queries ----------------------------------------------------------------------------
    def _query(self, unknown: list[str], field: str, query: Callable[[], T], default: T) -> T:
        """``query()``, or ``default`` with ``field`` marked unknown when NVML says 'not supported'."""
        try:
            return query()
        except self.nvml.NVMLError_NotSupported:
            unknown.append(field)
            return default

    def _cc(self, device: NvmlDevice) -> str:
        nv = self.nvml
        try:
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(device.handle)
        except nv.NVMLError_NotSupported:  # some MIG handles: the parent GPU's answer holds
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(device.parent_handle)
        return f"{major}.{minor}"

    def state(self, ref: int | str) -> GpuState:
        """One device's fields, NVML units translated (bytes -> MB, mW -> W); unsupported fields listed."""
        nv = self.nvml
        device = self.device(ref)
        handle = device.handle
        unknown: list[str] = []
        q = self._query
        memory = q(unknown, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(handle), None)
        rates = q(unknown, "utilization", lambda: nv.nvmlDeviceGetUtilizationRates(handle), None)
        board = device.parent_handle  # sensors and power belong to the board, also for a MIG slice
        temperature = float(
            q(unknown, "temperature_c", lambda: nv.nvmlDeviceGetTemperature(board, nv.NVML_TEMPERATURE_GPU), 0)
        )
        power = q(unknown, "power_usage_w", lambda: nv.nvmlDeviceGetPowerUsage(board), 0) / 1000.0
        limit = q(unknown, "power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(board), 0) / 1000.0
        name = q(unknown, "name", lambda: _text(nv.nvmlDeviceGetName(handle)), "unknown NVIDIA GPU")
        if memory is None:
            unknown += ["memory_total_mb", "memory_used_mb"]
            unknown.remove("memory")
        if rates is None:
            unknown += ["utilization_gpu", "utilization_memory"]
            unknown.remove("utilization")
        total_mb = int(memory.total // MIB) if memory is not None else 0
        used_mb = int(memory.used // MIB) if memory is not None else 0
        return GpuState(
            id=device.id,
            uuid=device.uuid,
            name=name,
            compute_capability=self._cc(device),
            status="active",
            memory_total_mb=total_mb,
            memory_used_mb=used_mb,
            utilization_gpu=float(rates.gpu) if rates is not None else 0.0,
            utilization_memory=float(rates.memory) if rates is not None else 0.0,
            temperature_c=temperature,
            power_usage_w=float(power),
            power_limit_w=float(limit),
            uptime_s=round(time.monotonic() - self._started, 1),
            health_status=classify_health(
                status="active", temperature_c=temperature, error_rate=0.0, max_temperature=self.max_temperature
            ),
            unknown=tuple(f for f in GpuState.__dataclass_fields__ if f in unknown),  # in field order
        )
