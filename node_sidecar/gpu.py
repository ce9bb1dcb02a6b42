"""GPU readings for the node's sidecar: NVML on a GPU machine, a file in tests, none elsewhere."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GpuReading:
    uuid: str
    name: str
    index: int
    utilization_pct: float
    memory_used_mb: float
    memory_total_mb: float
    temperature_c: float | None = None
    power_w: float | None = None


class GpuReader(Protocol):
    source: str

    def read(self) -> GpuReading | None: ...

    def close(self) -> None: ...


class NoGpu:
    """No NVML here (a CPU machine, or no driver): the sidecar reports queue load only."""

    source = "none"

    def read(self) -> GpuReading | None:
        return None

    def close(self) -> None:
        pass


class FileGpu:
    """Readings from a JSON file (GpuReading's fields), re-read each time: tests inject load."""

    source = "file"

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def read(self) -> GpuReading | None:
        try:
            return GpuReading(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def close(self) -> None:
        pass


class NvmlGpu:
    """NVML through nvidia-ml-py for one GPU, by index or (under Nomad) by its UUID."""

    source = "nvml"

    def __init__(self, index: int, uuid: str | None = None) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        if uuid:
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            index = int(pynvml.nvmlDeviceGetIndex(self._handle))
        else:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.index = index
        self.uuid = _text(pynvml.nvmlDeviceGetUUID(self._handle))
        self.name = _text(pynvml.nvmlDeviceGetName(self._handle))

    def read(self) -> GpuReading | None:
        nvml = self._nvml
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except nvml.NVMLError:
            return None
        temperature = power = None
        try:
            temperature = float(nvml.nvmlDeviceGetTemperature(self._handle,
                                                              nvml.NVML_TEMPERATURE_GPU))
            power = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except nvml.NVMLError:
            pass  # some boards report neither; the rest is still worth having
        return GpuReading(uuid=self.uuid, name=self.name, index=self.index,
                          utilization_pct=float(util.gpu),
                          memory_used_mb=memory.used / 2**20,
                          memory_total_mb=memory.total / 2**20,
                          temperature_c=temperature, power_w=power)

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def assigned_uuid(uuid_file: str | None) -> str | None:
    """The GPU Nomad gave the ComfyUI task, which its entrypoint writes down for the sidecar
    (the sidecar holds no device of its own: NVIDIA_VISIBLE_DEVICES=all, this picks one)."""
    if not uuid_file:
        return None
    try:
        text = pathlib.Path(uuid_file).read_text().strip()
    except OSError:
        return None
    return text.split(",")[0].strip() or None


def open_reader(gpu_index: int, readings_file: str | None,
                gpu_uuid: str | None = None) -> tuple[GpuReader, str | None]:
    """The reader to use, and why NVML is not used when it is not."""
    if readings_file:
        return FileGpu(pathlib.Path(readings_file)), None
    try:
        return NvmlGpu(gpu_index, gpu_uuid), None
    except Exception as exc:  # no library, no driver, no such GPU: all mean "no NVML here"
        return NoGpu(), f"{type(exc).__name__}: {exc}"
