"""Probe: cgroup v1/v2 limits from a fake tree, and the real probe on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steadyscribe.tasks.probe import Probe, disk_free_bytes, probe_resources

GiB = 2**30


def files(root: Path, tree: dict[str, str]) -> Path:
    for relative, text in tree.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def probe_with(tmp_path: Path, tree: dict[str, str], own_cgroups: str) -> Probe:
    root = files(tmp_path / "cgroup", tree)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(own_cgroups)
    return probe_resources([str(tmp_path)], cgroup_root=root, proc_self_cgroup=proc, check_accelerators=False)


def test_cgroup_v2_limits_of_own_cgroup_and_ancestors(tmp_path):
    probe = probe_with(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "job/cpu.max": "150000 100000",
            "job/memory.max": str(4 * GiB),
            "job/memory.current": str(3 * GiB),
            "job/step/cpu.max": "max 100000",
            "job/step/memory.max": "max",
            "job/step/memory.current": str(GiB),
        },
        "0::/job/step\n",
    )
    assert probe.cgroup_version == 2
    assert probe.cgroup_cpu_quota == 1.5
    assert probe.usable_cpus == 1
    assert probe.cgroup_memory_limit_bytes == 4 * GiB
    assert probe.memory_available_bytes == GiB  # 4 GiB limit - 3 GiB used, below the host's free memory


def test_cgroup_v2_without_limits(tmp_path):
    probe = probe_with(tmp_path, {"cgroup.controllers": "cpu", "cpu.max": "max 100000", "memory.max": "max"}, "0::/\n")
    assert probe.cgroup_cpu_quota is None and probe.cgroup_memory_limit_bytes is None
    assert probe.memory_available_bytes == probe.ram_available_bytes
    assert probe.usable_cpus == probe.cpu_affinity


def test_cgroup_v1_quota_and_memory_limit(tmp_path):
    probe = probe_with(
        tmp_path,
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            "memory/docker/abc/memory.limit_in_bytes": str(GiB),
            "memory/docker/abc/memory.usage_in_bytes": str(GiB // 4),
            "memory/memory.limit_in_bytes": "9223372036854771712",  # v1's "unlimited"
            "memory/memory.usage_in_bytes": str(8 * GiB),
        },
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
    )
    assert probe.cgroup_version == 1
    assert probe.cgroup_cpu_quota == 0.5
    assert probe.usable_cpus == 1  # never below one
    assert probe.cgroup_memory_limit_bytes == GiB
    assert probe.cgroup_memory_usage_bytes == GiB // 4
    assert probe.memory_available_bytes == GiB - GiB // 4


def test_cgroup_v1_namespaced_mount_reads_the_root(tmp_path):
    # Inside a container the mount root is the container's own cgroup; the listed path is absent.
    probe = probe_with(
        tmp_path,
        {
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": str(2 * GiB),
            "memory/memory.usage_in_bytes": str(GiB // 2),
        },
        "4:memory:/kubepods/pod1/c1\n3:cpu:/kubepods/pod1/c1\n",
    )
    assert probe.cgroup_cpu_quota is None
    assert probe.memory_available_bytes == 2 * GiB - GiB // 2


def test_no_cgroup_file_system(tmp_path):
    probe = probe_with(tmp_path, {}, "")
    assert probe.cgroup_version is None and probe.memory_available_bytes == probe.ram_available_bytes


def test_disk_free_for_local_missing_and_remote_paths(tmp_path):
    assert disk_free_bytes(str(tmp_path)) > 0
    assert disk_free_bytes(str(tmp_path / "not" / "yet" / "made")) == disk_free_bytes(str(tmp_path))
    assert disk_free_bytes("s3://bucket/out") is None
    assert disk_free_bytes(f"file://{tmp_path}") > 0


def test_real_probe_on_this_machine(tmp_path):
    probe = probe_resources([str(tmp_path), "gs://bucket/models"])
    assert probe.cpu_count >= 1 and 1 <= probe.usable_cpus <= probe.cpu_affinity <= probe.cpu_count
    assert 0 < probe.memory_available_bytes <= probe.ram_available_bytes <= probe.ram_total_bytes
    assert probe.disk_free_bytes[str(tmp_path)] > 0 and probe.disk_free_bytes["gs://bucket/models"] is None
    assert probe.cuda_available == bool(probe.gpus)
    for gpu in probe.gpus:
        assert 0 < gpu.free_bytes <= gpu.total_bytes and "." in gpu.compute_capability
    if probe.bitsandbytes_version is None:
        assert not probe.bitsandbytes_int8_cpu and not probe.bitsandbytes_cuda
    # Stages pass records around: the probe survives a JSON round trip.
    assert Probe.from_dict(json.loads(json.dumps(probe.to_dict()))) == probe


@pytest.mark.gpu
def test_real_probe_sees_the_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    probe = probe_resources([])
    assert probe.cuda_available and probe.gpus[0].total_bytes > 0
    from steadyscribe.tasks.probe import gpu_driver_present

    assert gpu_driver_present()  # else the probe would not even look


def test_without_a_gpu_driver_the_probe_does_not_import_torch():
    import subprocess
    import sys

    from steadyscribe.tasks.probe import gpu_driver_present

    if gpu_driver_present():
        pytest.skip("this machine has a GPU driver")
    code = (
        "import sys; from steadyscribe.tasks.probe import probe_resources; "
        "p = probe_resources([], bitsandbytes_devices=()); "
        "assert not p.cuda_available and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
