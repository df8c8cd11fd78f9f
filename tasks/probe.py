"""Probe stage: what this machine (or container) can give a run — CPUs, memory, GPUs, disk.

Container limits count: a cgroup CPU quota caps the threads, and a cgroup memory limit caps
the memory that is really available, whatever psutil says about the host.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from prefect import get_run_logger, task

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge page-aligned number


@dataclass
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str  # "8.6"


@dataclass
class Probe:
    """Resources seen at probe time; plain values only, so it serializes to JSON."""

    cpu_count: int  # logical CPUs of the machine
    cpu_affinity: int  # CPUs this process may run on
    cgroup_cpu_quota: float | None  # CPUs' worth of time the cgroup allows; None: no quota
    usable_cpus: int  # what thread counts should be sized to
    ram_total_bytes: int
    ram_available_bytes: int  # psutil's view of the host
    cgroup_memory_limit_bytes: int | None
    cgroup_memory_usage_bytes: int | None
    memory_available_bytes: int  # min(host available, cgroup limit - usage)
    cgroup_version: int | None = None
    cuda_available: bool = False  # torch sees a device and can allocate on it
    gpus: list[GpuInfo] = field(default_factory=list)
    bitsandbytes_version: str | None = None
    bitsandbytes_int8_cpu: bool = False  # an 8-bit Linear runs a forward pass on the CPU
    bitsandbytes_nf4_cpu: bool = False  # a 4-bit NF4 Linear runs a forward pass on the CPU
    bitsandbytes_cuda: bool = False  # 8-bit and 4-bit Linears run on the first GPU
    disk_free_bytes: dict[str, int | None] = field(default_factory=dict)  # None: remote or missing
    # RSS of the probing process, which runs the groups beside its engine process (a thread-runner flow, or a worker).
    process_rss_bytes: int = 0

    @property
    def gpu_free_bytes(self) -> int:
        """Free memory of the best GPU (runs use one device)."""
        return max((g.free_bytes for g in self.gpus), default=0)

    def best_gpu(self) -> GpuInfo | None:
        return max(self.gpus, key=lambda g: g.free_bytes, default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probe:
        return cls(**{**data, "gpus": [GpuInfo(**g) for g in data.get("gpus", [])]})


def probe_resources(
    paths: list[str],
    *,
    cgroup_root: Path = CGROUP_ROOT,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    check_accelerators: bool = True,
    bitsandbytes_devices: Collection[str] = ("cpu", "cuda"),
) -> Probe:
    """Probe CPUs, memory (host and cgroup), GPUs, bitsandbytes and free disk at `paths`.

    `paths` are the model cache and output locations; URLs get None for free disk.
    `check_accelerators=False` skips importing torch and bitsandbytes (a CPU-only profile, tests
    of the cgroup logic). bitsandbytes is tried only when a plan could use it on a device here:
    "cpu" in `bitsandbytes_devices`, or "cuda" there and a GPU found.
    """
    cgroup = CgroupLimits.read(cgroup_root, proc_self_cgroup)
    cpu_count = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpu_count
    usable = min(affinity, max(1, math.floor(cgroup.cpu_quota))) if cgroup.cpu_quota else affinity

    memory = psutil.virtual_memory()
    available = memory.available
    if cgroup.memory_headroom is not None:
        available = min(available, cgroup.memory_headroom)

    probe = Probe(
        cpu_count=cpu_count,
        cpu_affinity=affinity,
        cgroup_cpu_quota=cgroup.cpu_quota,
        usable_cpus=usable,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        cgroup_memory_limit_bytes=cgroup.memory_limit,
        cgroup_memory_usage_bytes=cgroup.memory_usage,
        memory_available_bytes=max(0, available),
        cgroup_version=cgroup.version,
        disk_free_bytes={path: disk_free_bytes(path) for path in paths},
    )
    if check_accelerators:
        probe.gpus = cuda_devices()
        probe.cuda_available = bool(probe.gpus)
    if check_accelerators and ("cpu" in bitsandbytes_devices or ("cuda" in bitsandbytes_devices and probe.cuda_available)):
        (
            probe.bitsandbytes_version,
            probe.bitsandbytes_int8_cpu,
            probe.bitsandbytes_nf4_cpu,
            probe.bitsandbytes_cuda,
        ) = bitsandbytes_support(probe.cuda_available)
    # Measured last: the accelerator checks import torch and bitsandbytes, which the run keeps.
    probe.process_rss_bytes = psutil.Process().memory_info().rss
    return probe


def disk_free_bytes(path: str) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent); None for URLs."""
    if "://" in path and not path.startswith("file://"):
        return None
    current = Path(path.removeprefix("file://")).expanduser().absolute()
    while not current.exists():
        if current == current.parent:
            return None
        current = current.parent
    return shutil.disk_usage(current).free


# ---------------------------------------------------------------- cgroups


@dataclass
class CgroupLimits:
    version: int | None = None
    cpu_quota: float | None = None  # CPUs
    memory_limit: int | None = None
    memory_usage: int | None = None
    memory_headroom: int | None = None  # tightest (limit - usage) over the cgroup and its ancestors

    @classmethod
    def read(cls, root: Path, proc_self_cgroup: Path) -> CgroupLimits:
        if (root / "cgroup.controllers").exists():
            return cls._read_v2(root, _own_cgroup_paths(proc_self_cgroup).get("", "/"))
        if (root / "memory").is_dir() or (root / "cpu").is_dir() or (root / "cpu,cpuacct").is_dir():
            return cls._read_v1(root, _own_cgroup_paths(proc_self_cgroup))
        return cls()

    @classmethod
    def _read_v2(cls, root: Path, own: str) -> CgroupLimits:
        limits = cls(version=2)
        for directory in _self_and_ancestors(root, own):
            cpu_max = _read(directory / "cpu.max")
            if cpu_max and not cpu_max.startswith("max"):
                quota, period = (int(x) for x in cpu_max.split()[:2])
                limits._tighten_cpu(quota / period)
            limits._tighten_memory(_read_int(directory / "memory.max"), _read_int(directory / "memory.current"))
        return limits

    @classmethod
    def _read_v1(cls, root: Path, own: dict[str, str]) -> CgroupLimits:
        limits = cls(version=1)
        cpu_dir = next((d for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / d).is_dir()), "cpu")
        for directory in _self_and_ancestors(root / cpu_dir, own.get("cpu", "/")):
            quota, period = _read_int(directory / "cpu.cfs_quota_us"), _read_int(directory / "cpu.cfs_period_us")
            if quota and quota > 0 and period:
                limits._tighten_cpu(quota / period)
        for directory in _self_and_ancestors(root / "memory", own.get("memory", "/")):
            limit = _read_int(directory / "memory.limit_in_bytes")
            limits._tighten_memory(limit if limit and limit < _UNLIMITED else None,
                                   _read_int(directory / "memory.usage_in_bytes"))
        return limits

    def _tighten_cpu(self, cpus: float) -> None:
        self.cpu_quota = cpus if self.cpu_quota is None else min(self.cpu_quota, cpus)

    def _tighten_memory(self, limit: int | None, usage: int | None) -> None:
        if limit is None:
            return
        headroom = limit - (usage or 0)
        if self.memory_headroom is None or headroom < self.memory_headroom:
            self.memory_limit, self.memory_usage, self.memory_headroom = limit, usage, headroom


def _own_cgroup_paths(proc_self_cgroup: Path) -> dict[str, str]:
    """Controller → this process's cgroup path ("" is the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    for line in (_read(proc_self_cgroup) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _self_and_ancestors(root: Path, own: str) -> list[Path]:
    """The process's cgroup directory and its parents up to the mount root, those that exist.

    Inside a container the mount root often is the process's own cgroup, so the root itself counts.
    """
    parts = [p for p in own.strip("/").split("/") if p]
    dirs = [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text and text.lstrip("-").isdigit() else None


# ---------------------------------------------------------------- accelerators


# A GPU torch could use shows one of these: NVIDIA's driver, AMD's ROCm (HIP) or WSL's GPU device.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def gpu_driver_present() -> bool:
    return any(os.path.exists(path) for path in GPU_DRIVER_PATHS)


def cuda_devices() -> list[GpuInfo]:
    """Every CUDA device torch can use, with its free memory now; [] when CUDA does not work.

    Without a GPU driver on the machine, [] without importing torch (seconds and ~300 MiB).
    """
    if not gpu_driver_present():
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        gpus = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            props = torch.cuda.get_device_properties(index)
            gpus.append(GpuInfo(index, props.name, total, free, f"{props.major}.{props.minor}"))
        return gpus
    except Exception:  # a broken driver or runtime means no usable GPU, not a failed run
        return []


@functools.cache
def bitsandbytes_support(cuda: bool) -> tuple[str | None, bool, bool, bool]:
    """(version, int8 works on CPU, nf4 works on CPU, int8 and nf4 work on CUDA), as the
    transformers engine loads them (steadyscribe.models.quantize runs tiny layers once)."""
    try:
        import bitsandbytes as bnb

        from steadyscribe.models.quantize import quantization_support
    except Exception:
        return None, False, False, False
    return (
        bnb.__version__,
        quantization_support("int8", "cpu") is None,
        quantization_support("nf4", "cpu") is None,
        cuda and quantization_support("int8", "cuda") is None and quantization_support("nf4", "cuda") is None,
    )


@task(name="probe")
def probe_task(
    paths: list[str],
    model_cache: str | None = None,
    check_accelerators: bool = True,
    bitsandbytes_devices: Collection[str] = ("cpu", "cuda"),
) -> Probe:
    """Probe the machine this task runs on; free disk at `paths` and at its own model cache (`model_cache` or the default).

    The checks flags are those of probe_resources: a plan that cannot use a GPU or bitsandbytes
    does not import torch or bitsandbytes to look for them.
    """
    from steadyscribe.models.provision import model_cache_dir  # loads the conversion code: only where a model may be provisioned

    probe = probe_resources(
        [str(model_cache_dir(model_cache)), *paths],
        check_accelerators=check_accelerators,
        bitsandbytes_devices=bitsandbytes_devices,
    )
    get_run_logger().info("probe: %s", json.dumps(probe.to_dict(), default=str))
    return probe
