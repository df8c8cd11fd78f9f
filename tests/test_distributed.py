"""Scale-out: groups of files transcribed on Dask workers, with nothing shared but the output.

The cluster is a `dask scheduler` and two `dask worker` processes (tests/dask_cluster.py), each
with its own temporary directory and model cache. The flow runs in this test process against the
session's Prefect server; the workers report to the same server.
"""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from dask_cluster import DaskCluster
from helpers import FIXTURES, files_rows
from steadyscribe import SAMPLE_RATE

pytestmark = pytest.mark.slow

FILES = [str(FIXTURES / f"{name}.flac") for name in ("clean_gb", "fast_speaker", "clean_us_slow", "noisy")]


def words_by_source(output: Path) -> dict[str, list[tuple]]:
    """Each file's words (text and times) from the ok rows, in order."""
    ok = {(r["run_id"], r["file_id"]) for r in files_rows(output) if r["status"] == "ok"}
    words: dict[str, list[tuple]] = {}
    rows = ds.dataset(output / "words", format="parquet").to_table().to_pylist()
    for row in sorted(rows, key=lambda r: (r["source"], r["segment_index"], r["word_index"])):
        if (row["run_id"], row["file_id"]) in ok:
            words.setdefault(row["source"], []).append((row["word"], row["start"], row["end"]))
    return words


@pytest.fixture(scope="module")
def one_file_groups(tmp_path_factory) -> str:
    """cpu-small with one file per group, so four files make four groups to spread."""
    path = tmp_path_factory.mktemp("profiles") / "one-file-groups.yaml"
    path.write_text(yaml.safe_dump({"extends": "cpu-small", "runner": {"files_per_group": 1}}))
    return str(path)


@pytest.fixture(scope="module")
def forty_short_files(tmp_path_factory) -> list[str]:
    """Forty distinct files of real speech: consecutive 2.5 s slices of the real recordings."""
    import av

    folder = tmp_path_factory.mktemp("forty")
    slice_length = round(2.5 * SAMPLE_RATE)
    paths = []
    for flac in sorted((FIXTURES / "real").glob("*.flac")):
        with av.open(str(flac)) as container:
            samples = b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in container.decode(audio=0))
        for start in range(0, len(samples) // 2 - slice_length + 1, slice_length):
            path = folder / f"{flac.stem}_{start // slice_length:02d}.wav"
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(SAMPLE_RATE)
                out.writeframes(samples[2 * start : 2 * (start + slice_length)])
            paths.append(str(path))
    assert len(paths) >= 40
    return paths[:40]


@pytest.fixture
def cluster(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    dask = DaskCluster(tmp_path / "cluster", workers=2, prefect_api_url=PREFECT_API_URL.value())
    try:
        yield dask
    finally:
        dask.close()


@pytest.fixture(scope="module")
def threads_output(prefect_server, one_file_groups, tmp_path_factory) -> Path:
    """The same files through the thread runner in this process: the reference."""
    from steadyscribe.flows.transcribe import transcribe

    output = tmp_path_factory.mktemp("threads-out")
    transcribe(inputs=FILES, output=str(output), profile=one_file_groups)
    return output


def test_groups_run_on_both_workers_and_match_the_thread_runner(cluster, one_file_groups, threads_output, tmp_path, monkeypatch):
    import steadyscribe.engines
    import steadyscribe.inference
    import steadyscribe.models.provision
    import steadyscribe.tasks.infer
    from steadyscribe.flows.transcribe import transcribe

    # This process is the flow's: it must never build an engine or provision a model.
    calls = []

    def forbidden(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"the flow process called {name}")
        return call

    monkeypatch.setattr(steadyscribe.engines, "load_engine", forbidden("load_engine"))
    monkeypatch.setattr(steadyscribe.inference, "load_engine", forbidden("load_engine"))
    monkeypatch.setattr(steadyscribe.models.provision, "provision", forbidden("provision"))
    engines_before = steadyscribe.tasks.infer.loaded_engines()  # this process's engine child

    output = tmp_path / "dask-out"
    summary = transcribe(inputs=FILES, output=str(output), profile=one_file_groups, scheduler=cluster.address)

    assert calls == [] and steadyscribe.tasks.infer.loaded_engines() == engines_before
    assert summary.files_ok == len(FILES)
    rows = files_rows(output)
    assert sorted(r["source"] for r in rows) == sorted(FILES)  # every file exactly once
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["worker"] for r in rows} == {w.name for w in cluster.workers}  # both workers transcribed
    dask_words, threads_words = words_by_source(output), words_by_source(threads_output)
    assert sorted(dask_words) == sorted(FILES)
    assert dask_words == threads_words
    # No group work directory was left in the workers' private temporary directories (onnxruntime,
    # which the VAD runs on, keeps a session file of its own there: not ours to remove).
    assert not any(any(w.temp_dir.glob("steadyscribe-*")) for w in cluster.workers)


def test_a_worker_killed_mid_group_loses_only_that_group(cluster, one_file_groups, tmp_path):
    from steadyscribe.flows.transcribe import transcribe

    output = tmp_path / "killed-out"
    victim, survivor = cluster.workers
    stop_watching = threading.Event()
    killed = threading.Event()

    def kill_when_busy():
        while not stop_watching.wait(0.2):
            if victim.busy_with_a_group():
                victim.kill()
                killed.set()
                return

    watcher = threading.Thread(target=kill_when_busy, daemon=True)
    watcher.start()
    try:
        transcribe(inputs=FILES, output=str(output), profile=one_file_groups, scheduler=cluster.address)
    except Exception:  # a lost group fails its files; the rerun below must pick them up
        pass
    finally:
        stop_watching.set()
        watcher.join()
    assert killed.is_set(), "the worker was never seen in the middle of a group"

    first_run = files_rows(output)
    assert sorted(r["source"] for r in first_run) == sorted(FILES)  # one row per file, whatever happened
    if {r["status"] for r in first_run} != {"ok"}:
        transcribe(inputs=FILES, output=str(output), profile=one_file_groups, scheduler=cluster.address)
    rows = files_rows(output)
    ok_sources = [r["source"] for r in rows if r["status"] == "ok"]
    assert sorted(ok_sources) == sorted(FILES), rows  # every file transcribed exactly once
    runs = {r["run_id"] for r in rows}
    for run_id in runs:  # and each run wrote one row per file
        assert sorted(r["source"] for r in rows if r["run_id"] == run_id) == sorted(FILES)
    assert survivor.name in {r["worker"] for r in rows if r["status"] == "ok"}


def test_forty_files_on_two_workers_keep_both_busy(cluster, forty_short_files, tmp_path):
    """A group size of 4 batches of files (64 at batch 16) alone would put all 40 files in one group."""
    from steadyscribe.flows.transcribe import transcribe

    # Greedy only: a window that falls back to sampling gets words that depend on what the
    # process sampled before (CTranslate2 seeds each thread's generator once, at its first use).
    greedy = tmp_path / "cpu-fast-greedy.yaml"
    greedy.write_text(yaml.safe_dump({"extends": "cpu-fast", "batch_size": 16, "decoding": {"temperatures": [0.0]}}))
    output = tmp_path / "dask-out"
    summary = transcribe(inputs=forty_short_files, output=str(output), profile=str(greedy), scheduler=cluster.address)
    assert summary.files_ok == 40
    rows = files_rows(output)
    assert sorted(r["source"] for r in rows) == sorted(forty_short_files)  # every file exactly once
    assert {r["worker"] for r in rows} == {w.name for w in cluster.workers}  # both workers transcribed
    assert len(group_commits(output)) == 4  # two groups of 10 per worker
    # Smaller groups, the same words: the thread runner transcribes the 40 files as one group.
    threads_output = tmp_path / "threads-out"
    transcribe(inputs=forty_short_files, output=str(threads_output), profile=str(greedy))
    assert len(group_commits(threads_output)) == 1
    assert words_by_source(output) == words_by_source(threads_output)


def group_commits(output: Path) -> list[Path]:
    """The `files` table's Parquet files: one per committed group."""
    return sorted((output / "files").rglob("*.parquet"))
