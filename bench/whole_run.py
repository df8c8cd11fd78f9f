"""Whole runs, start to exit, side by side (issues 17 and 31): what a data team pays for.

A user times the whole command and pays for the machine it holds. Each system runs as its own
command, one after the other, in interleaved rounds (so drift on the machine hits every system
alike), and gets, per input:
- wall time from start to exit, and audio hours per wall hour;
- CPU seconds per audio hour: user + system time of the command and every process under it
  (the rusage that /usr/bin/time reports covers the descendants the tree waited for; a descendant
  nobody waited for is counted from the samples below, whichever total is larger). Against a
  standing Prefect server, the CPU that server spent during the run is added;
- peak memory: the largest sum of RSS over the process tree (sampled every 0.1 s), the largest
  single process (ru_maxrss, as `time` reports it), and the largest sum of PSS (shared pages
  split between the processes that share them; sampled every 0.5 s);
- WER against the reference text (steadyscribe.metrics.corpus_wer, errors pooled over files).
The same tiny.en CTranslate2 weights (int8) for every system.

Inputs, all real speech:
- hour: the recordings of ../shared/realspeech end to end, each round in its own seeded order,
  HOUR_GAP_S apart, rounds repeated to an hour; the reference is the references in that order;
- realspeech: those recordings as a folder of files;
- clips: bench/clips.py's folder of 120 distinct short clips;
- long (on request): the twelve-minute file of issue 17, the recordings end to end three times.

Systems:
- `ours`: `steadyscribe run --profile auto`, which starts its own temporary Prefect server;
- `ours-standing`: the same against a Prefect server already running (as a scheduled deployment runs;
  the server's memory is not in the tree, its CPU during the run is added);
- `ours-packed` (on request): cpu-fast with `chunking.pack_files` on;
- `fw-batched-b1`, `fw-batched-b5`: faster-whisper's BatchedInferencePipeline, int8, batch 8, at beam 1
  (steadyscribe's profiles are greedy) and at its default beam 5 (bench/faster_whisper_run.py);
- `fw-sequential-b1`, `fw-sequential-b5`: faster-whisper's `WhisperModel.transcribe`, int8.

    .venv/bin/python -m bench.whole_run                 # the measurement, two rounds (quiet machine!)
    .venv/bin/python -m bench.whole_run --quick         # every system once on tiny inputs: checks the script
    .venv/bin/python -m bench.whole_run --only hour --systems ours,fw-batched-b1 --rounds 1

Writes DIR/whole_run.json (every run), DIR/whole_run.md (the table and issue 31's targets) and
DIR/whole_run-throughput_vs_memory.png; `--quick` writes whole_run-quick.* instead.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from bench.clips import build_clips, read_recording
from bench.common import (
    DEFAULT_DATA, DEFAULT_OUT, ROOT, SAMPLE_RATE, add_realspeech_option, machine_info, machine_line, realspeech_dir, write_wav,
)
from steadyscribe.metrics import corpus_wer

BIN = Path(sys.executable).parent
# The twelve-minute file of issue 17 (bench/long_file_profile.py profiles it).
LONG_ROUNDS = 3
LONG_PAUSE_S = 1.0
# The hour-long file.
HOUR_S = 3600.0
HOUR_GAP_S = (0.3, 1.0)
HOUR_SEED = 20261206
HOUR_RECIPE = 1  # bump when hour_file's construction changes
# Quick mode: tiny inputs, so that every system runs in a couple of minutes.
QUICK_CLIPS = 4
QUICK_RECORDINGS = ("r13_libri_61", "r26_goforward")
QUICK_HOUR_S = 30.0
SAMPLE_S = 0.1
PSS_EVERY = 5  # samples: reading PSS walks the page tables, RSS does not


@dataclass
class Input:
    name: str
    path: Path  # a file or a folder
    references: dict[str, str]  # file name -> reference text
    audio_s: float
    description: str


# ---- inputs ------------------------------------------------------------------------------------


def realspeech_folder(data_dir: Path, realspeech: Path, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """The real recordings (or those named) copied into a folder of data_dir; name -> reference text."""
    folder = data_dir / ("realspeech" if names is None else "realspeech_quick")
    folder.mkdir(parents=True, exist_ok=True)
    references = {}
    for flac in sorted(realspeech.glob("*.flac")):
        if names is not None and flac.stem not in names:
            continue
        if not (folder / flac.name).is_file():
            shutil.copyfile(flac, folder / flac.name)
        references[flac.name] = json.loads(flac.with_suffix(".json").read_text())["text"]
    return references


def long_file(data_dir: Path, realspeech: Path) -> dict[str, str]:
    """The real recordings end to end, LONG_ROUNDS times, as one WAV; name -> reference text."""
    path = data_dir / "long_real.wav"
    names = [flac.stem for flac in sorted(realspeech.glob("*.flac"))] * LONG_ROUNDS
    texts, pieces = [], []
    pause = np.zeros(round(LONG_PAUSE_S * SAMPLE_RATE), np.int16)
    for name in names:
        samples, truth = read_recording(realspeech, name)
        pieces += [samples, pause]
        texts.append(truth["text"])
    if not path.is_file():
        write_wav(path, np.concatenate(pieces))
    return {path.name: " ".join(texts)}


def hour_file(data_dir: Path, realspeech: Path, target_s: float = HOUR_S) -> dict[str, str]:
    """The real recordings end to end, HOUR_GAP_S apart, each round in a seeded order, to target_s; name -> reference.

    Rebuilt when the recordings or the recipe change (a manifest beside the WAV says which it holds).
    """
    recordings = {flac.stem: read_recording(realspeech, flac.stem) for flac in sorted(realspeech.glob("*.flac"))}
    digest = hashlib.sha256(f"{HOUR_RECIPE} {target_s} {HOUR_SEED} {HOUR_GAP_S}".encode())
    for name, (samples, truth) in recordings.items():
        digest.update(name.encode() + samples.tobytes() + truth["text"].encode())
    recipe = digest.hexdigest()[:16]
    path = data_dir / f"hour_real_{target_s:.0f}s.wav"
    manifest = path.with_suffix(".json")
    if path.is_file() and manifest.is_file() and json.loads(manifest.read_text())["recipe"] == recipe:
        return {path.name: json.loads(manifest.read_text())["reference"]}
    rng = np.random.default_rng(HOUR_SEED)
    names = list(recordings)
    pieces, texts, total = [], [], 0
    while total < target_s * SAMPLE_RATE:
        for k in rng.permutation(len(names)):
            samples, truth = recordings[names[k]]
            gap = np.zeros(round(rng.uniform(*HOUR_GAP_S) * SAMPLE_RATE), np.int16)
            pieces += [samples, gap]
            texts.append(truth["text"])
            total += len(samples) + len(gap)
            if total >= target_s * SAMPLE_RATE:
                break
    data_dir.mkdir(parents=True, exist_ok=True)
    write_wav(path, np.concatenate(pieces))
    reference = " ".join(texts)
    manifest.write_text(json.dumps({"recipe": recipe, "recordings": len(texts), "reference": reference}))
    return {path.name: reference}


def build_inputs(data_dir: Path, realspeech: Path, only: list[str], quick: bool) -> list[Input]:
    builders: dict[str, Callable[[], Input]] = {
        "hour": lambda: _file_input(
            "hour", data_dir, hour_file(data_dir, realspeech, QUICK_HOUR_S if quick else HOUR_S),
            "the real recordings end to end in seeded orders, 0.3-1 s apart, to an hour",
        ),
        "realspeech": lambda: _folder_input(
            "realspeech", data_dir / ("realspeech_quick" if quick else "realspeech"),
            realspeech_folder(data_dir, realspeech, QUICK_RECORDINGS if quick else None), "the real recordings as files",
        ),
        "clips": lambda: _clips_input(data_dir, realspeech, QUICK_CLIPS if quick else 120),
        "long": lambda: _file_input(
            "long", data_dir, long_file(data_dir, realspeech), "the real recordings end to end three times, 1 s apart",
        ),
    }
    unknown = set(only) - set(builders)
    if unknown:
        raise SystemExit(f"unknown inputs {sorted(unknown)}; choose from {sorted(builders)}")
    return [builders[name]() for name in only]


def _file_input(name: str, data_dir: Path, references: dict[str, str], description: str) -> Input:
    (file_name, _), = references.items()
    path = data_dir / file_name
    return Input(name, path, references, audio_duration_s(path), description)


def _folder_input(name: str, folder: Path, references: dict[str, str], description: str) -> Input:
    return Input(name, folder, references, sum(audio_duration_s(p) for p in audio_paths(folder)),
                 f"{description} ({len(references)})")


def _clips_input(data_dir: Path, realspeech: Path, count: int) -> Input:
    clips = build_clips(data_dir, count, realspeech)
    return Input("clips", data_dir / f"clips_{count}", {Path(f.path).name: f.text for f in clips},
                 sum(f.duration_s for f in clips), f"{count} short clips of real speech (bench/clips.py)")


def audio_paths(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".wav", ".flac"))


def audio_duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0)) / SAMPLE_RATE


# ---- measuring one command ---------------------------------------------------------------------


class TreeSampler:
    """Samples a process tree until stopped: peak summed RSS, peak summed PSS, CPU seconds per process seen."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.rss_peak = self.pss_peak = 0
        self.cpu_s: dict[int, float] = {}  # last seen user + system of each process (its own threads only)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        count = 0
        while not self._stop.is_set():
            try:  # the root is /usr/bin/time (see measure): its command and their descendants
                processes = self.root.children(recursive=True)
            except psutil.Error:
                processes = []
            rss = pss = 0
            with_pss = count % PSS_EVERY == 0
            for process in processes:
                try:
                    with process.oneshot():
                        rss += process.memory_info().rss
                        times = process.cpu_times()
                    self.cpu_s[process.pid] = times.user + times.system
                    if with_pss:
                        pss += process.memory_full_info().pss
                except psutil.Error:  # ended between listing and reading
                    continue
            self.rss_peak = max(self.rss_peak, rss)
            self.pss_peak = max(self.pss_peak, pss)
            count += 1
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu_s(process: psutil.Process) -> float:
    """User + system seconds of a running process, its running descendants and the descendants it waited for."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + (times.children_user + times.children_system if member is process else 0)
    return total


def measure(command: list[str], env: dict[str, str], scratch: Path, server: psutil.Process | None = None) -> dict:
    """Run `command` to its exit: wall seconds, CPU seconds and memory peaks of its process tree.

    The command runs under /usr/bin/time, a small process: a child's ru_maxrss starts at its
    parent's high-water mark, so forked from this process it would read at least this one's size.
    """
    server_cpu_before = tree_cpu_s(server) if server else 0.0
    report = scratch / "time.txt"
    started = time.perf_counter()
    with (scratch / "stderr.log").open("w") as stderr:
        process = subprocess.Popen(["/usr/bin/time", "-f", "%U %S %M", "-o", str(report), *command], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    sampler = TreeSampler(process.pid)
    process.wait()
    wall_s = time.perf_counter() - started
    sampler.stop()
    server_cpu_s = _settled_cpu_s(server) - server_cpu_before if server else 0.0
    # time's own line is the last: a command killed by a signal adds one before it.
    user_s, system_s, max_rss_kib = report.read_text().split("\n")[-2].split()
    # The rusage time reports covers the command and every descendant it waited for.
    waited_cpu_s = float(user_s) + float(system_s)
    sampled_cpu_s = sum(sampler.cpu_s.values())
    return {
        "exit": process.returncode,
        "wall_s": wall_s,
        # The larger of the two: the rusage misses a descendant nobody waited for, the samples
        # miss each process's last tenth of a second and children that came and went between them.
        "cpu_s": max(waited_cpu_s, sampled_cpu_s) + server_cpu_s,
        "cpu_s_waited": waited_cpu_s,
        "cpu_s_sampled": sampled_cpu_s,
        "server_cpu_s": server_cpu_s,
        "processes_seen": len(sampler.cpu_s),
        "tree_peak_rss_bytes": sampler.rss_peak,
        "tree_peak_pss_bytes": sampler.pss_peak,
        "largest_process_rss_bytes": int(max_rss_kib) * 1024,
        "stderr_tail": (scratch / "stderr.log").read_text()[-2000:] if process.returncode else "",
    }


def _settled_cpu_s(server: psutil.Process, timeout_s: float = 10.0) -> float:
    """The standing server's CPU seconds once it has finished recording the run (idle for a second)."""
    deadline = time.monotonic() + timeout_s
    before = tree_cpu_s(server)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = tree_cpu_s(server)
        if now - before < 0.05:
            return now
        before = now
    return before


# ---- systems -----------------------------------------------------------------------------------

Command = Callable[[Path, Path], tuple[list[str], Callable[[], dict[str, str]]]]


@dataclass
class System:
    label: str
    command: Command  # (input path, scratch dir) -> (argv, reader of the words it wrote: file name -> text)
    standing_server: bool = False


def steadyscribe_words(output: Path) -> dict[str, str]:
    import duckdb

    rows = duckdb.sql(
        f"SELECT source, string_agg(trim(word), ' ' ORDER BY start) FROM read_parquet('{output}/words/**/*.parquet') GROUP BY source"
    ).fetchall()
    return {Path(source).name: text for source, text in rows}


def faster_whisper_words(path: Path) -> dict[str, str]:
    return {name: "".join(w["word"] for w in words) for name, words in json.loads(path.read_text()).items()}


STANDING_PORT = 4299
DEFAULT_SYSTEMS = "ours,ours-standing,fw-batched-b1,fw-batched-b5,fw-sequential-b1,fw-sequential-b5"
PEER = "fw-batched-b1"  # the × column compares every system's speed with this one's


def systems(model_dir: str, scratch_root: Path) -> dict[str, System]:
    packed = scratch_root / "cpu-fast-packed.yaml"
    packed.write_text("extends: cpu-fast\nchunking:\n  pack_files: true\n")

    def steadyscribe(*profile: str) -> Command:
        def command(source: Path, scratch: Path):
            out = scratch / "out"
            return [str(BIN / "steadyscribe"), "run", str(source), "--output", str(out), *(profile or ("--profile", "auto"))], \
                lambda: steadyscribe_words(out)
        return command

    def faster_whisper(beam: int, sequential: bool = False) -> Command:
        def command(source: Path, scratch: Path):
            out = scratch / "words.json"
            return [str(BIN / "python"), "-m", "bench.faster_whisper_run", str(source), "--model-dir", model_dir,
                    "--out", str(out), "--beam-size", str(beam), *(["--sequential"] if sequential else [])], \
                lambda: faster_whisper_words(out)
        return command

    return {
        "ours": System("steadyscribe run --profile auto (own Prefect server)", steadyscribe()),
        "ours-standing": System("steadyscribe run --profile auto, Prefect server already running", steadyscribe(), True),
        "ours-packed": System("steadyscribe run, cpu-fast with chunking.pack_files on", steadyscribe("--profile", str(packed))),
        "fw-batched-b1": System("faster-whisper batched int8 b8, beam 1", faster_whisper(1)),
        "fw-batched-b5": System("faster-whisper batched int8 b8, beam 5", faster_whisper(5)),
        "fw-sequential-b1": System("faster-whisper sequential int8, beam 1", faster_whisper(1, sequential=True)),
        "fw-sequential-b5": System("faster-whisper sequential int8, beam 5", faster_whisper(5, sequential=True)),
    }


# ---- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="hour,realspeech,clips", help="inputs: hour, realspeech, clips, long")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS,
                        help=f"default {DEFAULT_SYSTEMS}; also ours-packed")
    parser.add_argument("--quick", action="store_true",
                        help="every system once on tiny inputs, no warm-up: checks that the script works, measures nothing")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_realspeech_option(parser)
    args = parser.parse_args()
    from steadyscribe.models.provision import provision

    rounds = 1 if args.quick else args.rounds
    inputs = build_inputs(args.data_dir, realspeech_dir(args.realspeech), args.only.split(","), args.quick)
    scratch_root = Path(tempfile.mkdtemp(prefix="steadyscribe-whole-run-"))
    available = systems(str(provision("tiny.en", "ctranslate2")), scratch_root)
    chosen = args.systems.split(",")
    if unknown := set(chosen) - set(available):
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {sorted(available)}")
    env = {**os.environ, "PREFECT_HOME": str(scratch_root / "prefect-home"), "STEADYSCRIBE_LOG_DIR": str(scratch_root / "logs"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    # A scheduled deployment talks to a Prefect server that is already up: that run skips the
    # temporary server's start and stop.
    standing_env = {**env, "PREFECT_HOME": str(scratch_root / "standing-home"),
                    "PREFECT_API_URL": f"http://127.0.0.1:{STANDING_PORT}/api"}
    server = None
    if any(available[key].standing_server for key in chosen):
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--port", str(STANDING_PORT)], env=standing_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(f"http://127.0.0.1:{STANDING_PORT}/api/health")
    try:
        if not args.quick:
            _warm_up(inputs, {key: available[key] for key in chosen}, scratch_root, env, standing_env)
        load_start = os.getloadavg()
        runs = []
        for round_index in range(rounds):
            for item in inputs:
                for key in chosen:
                    system = available[key]
                    scratch = scratch_root / f"{round_index}-{item.name}-{key}"
                    scratch.mkdir(parents=True)
                    argv, read_words = system.command(item.path, scratch)
                    result = measure(argv, standing_env if system.standing_server else env, scratch,
                                     psutil.Process(server.pid) if system.standing_server else None)
                    if result["exit"] == 0:
                        texts = read_words()
                        result["wer"] = corpus_wer((reference, texts.get(name, "")) for name, reference in item.references.items())
                    result.update(input=item.name, system=key, round=round_index)
                    runs.append(result)
                    print(json.dumps({k: v for k, v in result.items() if k != "stderr_tail"}), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    report = {
        "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.whole_run " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "inputs": {i.name: {"audio_s": i.audio_s, "files": len(i.references), "description": i.description} for i in inputs},
        "systems": {key: available[key].label for key in chosen},
        "runs": runs,
    }
    stem = "whole_run-quick" if args.quick else "whole_run"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(report))
    plot(report, args.out / f"{stem}-throughput_vs_memory.png")
    shutil.rmtree(scratch_root, ignore_errors=True)
    print(f"wrote {args.out / stem}.json, .md and -throughput_vs_memory.png")


def _warm_up(inputs: list[Input], chosen: dict[str, System], scratch_root: Path, env: dict, standing_env: dict) -> None:
    """Untimed: Prefect's databases, the OS file cache of every system's libraries, weights and inputs."""
    smallest = min((p for item in inputs for p in audio_paths(item.path)), key=lambda p: p.stat().st_size)
    for item in inputs:  # read every input once, so that the first system timed does not pay for the disk
        for path in audio_paths(item.path):
            path.read_bytes()
    for key, system in chosen.items():
        scratch = scratch_root / "warm" / key
        scratch.mkdir(parents=True)
        subprocess.run(system.command(smallest, scratch)[0], env=standing_env if system.standing_server else env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _wait_for(url: str, timeout_s: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# ---- the report --------------------------------------------------------------------------------


def summary(report: dict) -> dict[tuple[str, str], dict]:
    """Per (input, system): medians over the rounds of wall time, CPU time and WER; the largest memory peaks."""
    table: dict[tuple[str, str], dict] = {}
    for run in report["runs"]:
        table.setdefault((run["input"], run["system"]), {"runs": []})["runs"].append(run)
    for (input_name, _), row in table.items():
        ok = [r for r in row["runs"] if r["exit"] == 0]
        row["failed"] = len(row["runs"]) - len(ok)
        if not ok:
            continue
        audio_h = report["inputs"][input_name]["audio_s"] / 3600
        row["wall_s"] = float(np.median([r["wall_s"] for r in ok]))
        row["audio_h_per_h"] = audio_h * 3600 / row["wall_s"]
        row["cpu_s_per_audio_h"] = float(np.median([r["cpu_s"] for r in ok])) / audio_h
        row["wer"] = float(np.median([r["wer"] for r in ok]))
        for peak in ("tree_peak_rss_bytes", "tree_peak_pss_bytes", "largest_process_rss_bytes"):
            row[peak] = max(r[peak] for r in ok)
    return table


def markdown(report: dict) -> str:
    table = summary(report)
    systems_ = report["systems"]
    lines = [
        "**Machine:** " + machine_line(report["machine"], report["date"]),
        "",
        *(["**Quick mode: tiny inputs, one round, no warm-up. These figures check the script; they measure nothing.**", ""]
          if report["quick"] else []),
        f"| input | system | wall s | audio h / h | × {PEER} speed | CPU s / audio h | peak RSS, tree (MiB) | "
        "largest process (MiB) | peak PSS, tree (MiB) | WER |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (input_name, key), row in table.items():
        about = report["inputs"][input_name]
        where = f"{input_name} ({about['audio_s'] / 60:.1f} min, {about['files']} file{'s' if about['files'] > 1 else ''})"
        if "wall_s" not in row:
            lines.append(f"| {where} | {systems_[key]} | failed | | | | | | | |")
            continue
        peer = table.get((input_name, PEER), {})
        ratio = f"{peer['wall_s'] / row['wall_s']:.2f}" if peer.get("wall_s") else "–"
        failed = f" ({row['failed']} of {len(row['runs'])} runs failed)" if row["failed"] else ""
        lines.append(
            f"| {where} | {systems_[key]}{failed} | {row['wall_s']:.1f} | {row['audio_h_per_h']:.1f} | {ratio} | "
            f"{row['cpu_s_per_audio_h']:.0f} | {row['tree_peak_rss_bytes'] / 2**20:.0f} | "
            f"{row['largest_process_rss_bytes'] / 2**20:.0f} | {row['tree_peak_pss_bytes'] / 2**20:.0f} | {row['wer']:.1%} |"
        )
    lines += [
        "",
        f"Command: `{report['command']}`. Wall and CPU time and WER: medians over the rounds; memory: the largest "
        "peak over the rounds. CPU: user + system of the whole process tree (with a standing server, plus that "
        "server's CPU during the run). Peak RSS, tree: the largest sum over the tree's processes (sampled every "
        f"{SAMPLE_S} s); largest process: ru_maxrss; PSS shares each shared page between the processes that map it.",
        "",
        "Issue 31's targets (steadyscribe with its own server):",
        "",
        *targets(table),
        "",
    ]
    return "\n".join(lines)


def targets(table: dict[tuple[str, str], dict]) -> list[str]:
    """Issue 31's targets, each with the figures it compares and whether they meet it."""

    def get(input_name: str, key: str, field: str) -> float | None:
        return table.get((input_name, key), {}).get(field)

    def check(name: str, holds: Callable[[], bool], shown: Callable[[], str]) -> str:
        try:
            return f"- {name}: {shown()}: {'met' if holds() else '**not met**'}"
        except TypeError:  # a figure is missing (input or system not run, or failed)
            return f"- {name}: not measured"

    def speed(input_name: str) -> float | None:
        ours, peer = get(input_name, "ours", "wall_s"), get(input_name, PEER, "wall_s")
        return peer / ours if ours and peer else None

    rss = "tree_peak_rss_bytes"
    return [
        check("hour: ≥ 1.3× faster-whisper batched's speed", lambda: speed("hour") >= 1.3, lambda: f"{speed('hour'):.2f}×"),
        check("hour: WER ≤ faster-whisper sequential (beam 1) + 0.5 point",
              lambda: get("hour", "ours", "wer") <= get("hour", "fw-sequential-b1", "wer") + 0.005,
              lambda: f"{get('hour', 'ours', 'wer'):.1%} against {get('hour', 'fw-sequential-b1', 'wer'):.1%}"),
        check("realspeech: ≥ 1.3× faster-whisper batched's speed", lambda: speed("realspeech") >= 1.3,
              lambda: f"{speed('realspeech'):.2f}×"),
        check("clips: ≥ 1.5× faster-whisper batched's speed", lambda: speed("clips") >= 1.5, lambda: f"{speed('clips'):.2f}×"),
        check("realspeech: peak RSS (tree) ≤ 1.3× faster-whisper batched's",
              lambda: get("realspeech", "ours", rss) <= 1.3 * get("realspeech", PEER, rss),
              lambda: f"{get('realspeech', 'ours', rss) / 2**20:.0f} MiB against {get('realspeech', PEER, rss) / 2**20:.0f} MiB"),
        check("peak RSS (tree) within 10% between realspeech and hour",
              lambda: abs(get("hour", "ours", rss) / get("realspeech", "ours", rss) - 1) <= 0.10,
              lambda: f"{get('hour', 'ours', rss) / 2**20:.0f} MiB against {get('realspeech', 'ours', rss) / 2**20:.0f} MiB"),
    ]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary(report)
    inputs = list(dict.fromkeys(i for i, _ in table))
    figure, axes = plt.subplots(1, len(inputs), figsize=(5 * len(inputs), 4), squeeze=False)
    for axis, input_name in zip(axes[0], inputs):
        for (name, key), row in table.items():
            if name == input_name and "wall_s" in row:
                axis.scatter(row["tree_peak_rss_bytes"] / 2**20, row["audio_h_per_h"], label=report["systems"][key])
        axis.set(title=f"{input_name} ({report['inputs'][input_name]['audio_s'] / 60:.1f} min of audio)",
                 xlabel="peak RSS of the process tree (MiB)", ylabel="audio hours per hour, whole run")
        axis.set_xlim(left=0)
        axis.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
