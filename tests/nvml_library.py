"""The real ``pynvml`` (nvidia-ml-py) with only its C library replaced: the NVML tests' one fake.

:func:`real_pynvml_on` loads a fresh copy of the installed ``pynvml`` module, so its Python wrappers,
ctypes structures, error classes and str/bytes conversions all run as they do on a GPU server, and sets
its ``nvmlLib`` (the ``CDLL("libnvidia-ml.so.1")`` handle) to :class:`FakeNvmlLibrary`. That object
answers the C entry points by their C names, through the ctypes pointers the wrappers pass, with NVML's
return codes. A Python name nvidia-ml-py lacks fails with ``AttributeError``, as on a real GPU; a C name
the fake lacks fails with ``NVMLError_FunctionNotFound``, as on an old driver.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import pynvml

SUCCESS = pynvml.NVML_SUCCESS
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
# nvmlErrorString's answers (libnvidia-ml), for the codes these tests use
ERROR_STRINGS = {
    pynvml.NVML_SUCCESS: b"Success",
    pynvml.NVML_ERROR_UNINITIALIZED: b"Uninitialized",
    pynvml.NVML_ERROR_INVALID_ARGUMENT: b"Invalid Argument",
    pynvml.NVML_ERROR_NOT_SUPPORTED: b"Not Supported",
    pynvml.NVML_ERROR_NO_PERMISSION: b"Insufficient Permissions",
    pynvml.NVML_ERROR_NOT_FOUND: b"Not Found",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: b"Driver Not Loaded",
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: b"NVML Shared Library Not Found",
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: b"Function Not Found",
    pynvml.NVML_ERROR_GPU_IS_LOST: b"GPU is lost",
    pynvml.NVML_ERROR_UNKNOWN: b"Unknown Error",
}


@dataclass
class FakeDevice:
    """One board (or MIG slice) as the C library would report it."""

    name: str
    uuid: str
    cc: tuple[int, int]
    total_bytes: int
    used_bytes: int
    util_gpu: int | None = 0  # None (here and below): NVML_ERROR_NOT_SUPPORTED
    util_memory: int = 0
    temperature: int | None = 40
    power_mw: int | None = 100_000
    limit_mw: int | None = 250_000
    memory_supported: bool = True
    cc_supported: bool = True
    mig: list[FakeDevice | None] | None = None  # MIG mode on: its slices (None: an empty slot)
    error: int | None = None  # every query returns this code: a driver failure at run time
    broken: dict[str, int] = field(default_factory=dict)  # C function name -> the code it returns


def _set_handle(out: ctypes._CArgObject, value: int) -> None:
    """Write an opaque device handle (``c_nvmlDevice_t``) through ``byref(handle)``."""
    ctypes.cast(ctypes.pointer(out._obj), ctypes.POINTER(ctypes.c_void_p)).contents.value = value


def _handle_value(handle) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


class FakeNvmlLibrary:
    """``libnvidia-ml.so.1`` for ``devices``: the C entry points the code reaches, and nothing else."""

    def __init__(self, devices: list[FakeDevice], *, init_error: int | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.calls: list[str] = []
        self._handles: dict[int, FakeDevice] = {}
        for name, function in self._entry_points().items():
            setattr(self, name, function)  # plain functions: pynvml sets ``restype`` on some

    def _handle_of(self, device: FakeDevice) -> int:
        value = 0x1000 + 0x10 * len(self._handles)
        for known, dev in self._handles.items():
            if dev is device:
                return known
        self._handles[value] = device
        return value

    def _entry_points(self) -> dict[str, Callable[..., int]]:
        def init(flags: int) -> int:
            self.calls.append("init")
            return self.init_error or SUCCESS

        def error_string(code: int) -> bytes:
            return ERROR_STRINGS.get(code, b"Unknown Error")

        def count(out) -> int:
            out._obj.value = len(self.devices)
            return SUCCESS

        def handle_by_index(index: ctypes.c_uint, out) -> int:
            if not 0 <= index.value < len(self.devices):
                return pynvml.NVML_ERROR_INVALID_ARGUMENT
            _set_handle(out, self._handle_of(self.devices[index.value]))
            return SUCCESS

        def query(c_name: str, answer: Callable[..., int | None]) -> Callable[..., int]:
            """A per-device C function: the device's error, else ``answer(device, *args)``: a code, None for success."""

            def entry(handle, *args) -> int:
                device = self._handles[_handle_value(handle)]
                code = device.error or device.broken.get(c_name)
                if code:
                    return code
                result = answer(device, *args)
                return SUCCESS if result is None else result

            entry.__name__ = c_name
            return entry

        def text(value: Callable[[FakeDevice], str]):
            def write(device: FakeDevice, buffer, length) -> None:
                buffer.value = value(device).encode()[: length.value - 1]

            return write

        def out_value(value: Callable[[FakeDevice], int | None]):
            def write(device: FakeDevice, *args) -> int | None:
                answer = value(device)
                if answer is None:
                    return NOT_SUPPORTED
                args[-1]._obj.value = answer
                return None

            return write

        def compute_capability(device: FakeDevice, major, minor) -> int | None:
            if not device.cc_supported:
                return NOT_SUPPORTED
            major._obj.value, minor._obj.value = device.cc
            return None

        def memory(device: FakeDevice, out) -> int | None:
            if not device.memory_supported:
                return NOT_SUPPORTED
            out._obj.total, out._obj.used = device.total_bytes, device.used_bytes
            out._obj.free = device.total_bytes - device.used_bytes
            return None

        def utilization(device: FakeDevice, out) -> int | None:
            if device.util_gpu is None:
                return NOT_SUPPORTED
            out._obj.gpu, out._obj.memory = device.util_gpu, device.util_memory
            return None

        def mig_mode(device: FakeDevice, current, pending) -> int | None:
            if device.mig is None and device.cc < (8, 0):
                return NOT_SUPPORTED  # pre-Ampere boards have no MIG at all
            mode = pynvml.NVML_DEVICE_MIG_ENABLE if device.mig is not None else pynvml.NVML_DEVICE_MIG_DISABLE
            current._obj.value = pending._obj.value = mode
            return None

        def mig_handle(device: FakeDevice, slot: ctypes.c_uint, out) -> int | None:
            slices = device.mig or []
            if slot.value >= len(slices) or slices[slot.value] is None:
                return pynvml.NVML_ERROR_NOT_FOUND
            _set_handle(out, self._handle_of(slices[slot.value]))
            return None

        def temperature(device: FakeDevice, sensor, out) -> int | None:
            if sensor.value != pynvml.NVML_TEMPERATURE_GPU:
                return pynvml.NVML_ERROR_INVALID_ARGUMENT
            return out_value(lambda d: d.temperature)(device, out)

        per_device = {
            "nvmlDeviceGetName": text(lambda d: d.name),
            "nvmlDeviceGetUUID": text(lambda d: d.uuid),
            "nvmlDeviceGetCudaComputeCapability": compute_capability,
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetUtilizationRates": utilization,
            "nvmlDeviceGetTemperature": temperature,
            "nvmlDeviceGetPowerUsage": out_value(lambda d: d.power_mw),
            "nvmlDeviceGetEnforcedPowerLimit": out_value(lambda d: d.limit_mw),
            "nvmlDeviceGetMigMode": mig_mode,
            "nvmlDeviceGetMaxMigDeviceCount": out_value(lambda d: 7),
            "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
        }
        return {
            "nvmlInitWithFlags": init,
            "nvmlErrorString": error_string,
            "nvmlDeviceGetCount_v2": count,
            "nvmlDeviceGetHandleByIndex_v2": handle_by_index,
            **{name: query(name, answer) for name, answer in per_device.items()},
        }


def real_pynvml_on(devices: list[FakeDevice], *, init_error: int | None = None) -> ModuleType:
    """A fresh copy of the installed ``pynvml`` whose C library is a :class:`FakeNvmlLibrary` of ``devices``."""
    name = "pynvml_on_a_fake_library"  # pynvml makes its error classes on sys.modules[__name__]
    spec = importlib.util.spec_from_file_location(name, pynvml.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    module.nvmlLib = FakeNvmlLibrary(devices, init_error=init_error)  # _LoadNvmlLibrary keeps a loaded one
    return module
