"""Whole runs, start to exit, side by side (issue 17): `steadyscribe run` against faster-whisper.

A user times the whole command. Each system runs as its own command under `/usr/bin/time -v`,
one after the other, in interleaved rounds (so drift on the machine hits every system alike):
wall time from start to exit, the peak RSS that `time` reports (the largest process of the
tree), and the peak of the tree's summed RSS sampled every 0.1 s (steadyscribe's temporary
Prefect server is a second process). The same tiny.en CTranslate2 weights on both sides.

Inputs, real speech first:
- clips: bench/clips.py's folder of 120 distinct short clips;
- realspeech: the 11 recordings of ../shared/realspeech (2.8 s to 53 s);
- long: one ten-minute file, those recordings end to end three times, 1 s apart.

Systems:
- `steadyscribe run --profile auto` (cpu-fast here): with its temporary Prefect server, and
  against a Prefect server already running (as a scheduled deployment runs);
- cpu-fast with `chunking.pack_files` on (off in every shipped profile: it costs WER);
- faster-whisper's BatchedInferencePipeline, int8, batch 8, file by file (bench/faster_whisper_run.py),
  at beam 1 (steadyscribe's profiles are greedy) and at its default beam 5.

    .venv/bin/python -m bench.whole_run [--rounds 2] [--only clips,realspeech,long]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.clips import build_clips, read_recording
from bench.common import (
    DEFAULT_DATA, DEFAULT_OUT, ROOT, SAMPLE_RATE, add_realspeech_option, machine_info, machine_line, realspeech_dir, write_wav,
)
from steadyscribe.metrics import corpus_wer

BIN = Path(sys.executable).parent
LONG_ROUNDS = 3
LONG_PAUSE_S = 1.0


def realspeech_folder(data_dir: Path, realspeech: Path) -> dict[str, str]:
    """The real recordings copied into data_dir/realspeech; name -> reference text."""
    folder = data_dir / "realspeech"
    folder.mkdir(parents=True, exist_ok=True)
    references = {}
    for flac in sorted(realspeech.glob("*.flac")):
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


def timed(command: list[str], env: dict[str, str]) -> dict:
    """Run `command` under /usr/bin/time -v; wall seconds, time's peak RSS and the tree's summed peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        started = time.perf_counter()
        process = subprocess.Popen(["/usr/bin/time", "-v", "-o", report.name, *command], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tree_peak = _sample_tree_rss(process)
        _, stderr = process.communicate()
        wall_s = time.perf_counter() - started
        text = report.read()
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"exit": process.returncode, "wall_s": wall_s, "peak_rss_bytes": peak_kib * 1024,
            "tree_peak_rss_bytes": tree_peak.value, "stderr_tail": stderr[-2000:] if process.returncode else ""}


class _Peak:
    value = 0


def _sample_tree_rss(process: subprocess.Popen) -> _Peak:
    peak = _Peak()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.name() != "time")
            except psutil.Error:
                continue
            peak.value = max(peak.value, total)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return peak


def steadyscribe_words(output: Path) -> dict[str, str]:
    import duckdb

    rows = duckdb.sql(
        f"SELECT source, string_agg(trim(word), ' ' ORDER BY start) FROM read_parquet('{output}/words/**/*.parquet') GROUP BY source"
    ).fetchall()
    return {Path(source).name: text for source, text in rows}


def faster_whisper_words(path: Path) -> dict[str, str]:
    return {name: "".join(w["word"] for w in words) for name, words in json.loads(path.read_text()).items()}


STANDING_PORT = 4299
STANDING = "steadyscribe run --profile auto, Prefect server already running"


def systems(model_dir: str, scratch_root: Path) -> dict[str, callable]:
    """label -> (input path, scratch dir) -> (command, reader of its output)."""
    packed = scratch_root / "cpu-fast-packed.yaml"
    packed.write_text("extends: cpu-fast\nchunking:\n  pack_files: true\n")

    def steadyscribe(*extra: str):
        def command(source: Path, scratch: Path):
            out = scratch / "out"
            return [str(BIN / "steadyscribe"), "run", str(source), "--output", str(out), *(extra or ("--profile", "auto"))], \
                lambda: steadyscribe_words(out)
        return command

    def faster_whisper(beam: int):
        def command(source: Path, scratch: Path):
            out = scratch / "words.json"
            return [str(BIN / "python"), "-m", "bench.faster_whisper_run", str(source), "--model-dir", model_dir,
                    "--out", str(out), "--beam-size", str(beam)], lambda: faster_whisper_words(out)
        return command

    return {
        "steadyscribe run --profile auto": steadyscribe(),
        STANDING: steadyscribe(),
        "steadyscribe run, cpu-fast with chunking.pack_files on": steadyscribe("--profile", str(packed)),
        "faster-whisper batched int8 b8, beam 1": faster_whisper(1),
        "faster-whisper batched int8 b8, beam 5": faster_whisper(5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="clips,realspeech,long")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_realspeech_option(parser)
    args = parser.parse_args()
    from steadyscribe.models.provision import provision

    realspeech = realspeech_dir(args.realspeech)
    clips = build_clips(args.data_dir, 120, realspeech)
    inputs = {
        "clips": (args.data_dir / "clips_120", {Path(f.path).name: f.text for f in clips}),
        "realspeech": (args.data_dir / "realspeech", realspeech_folder(args.data_dir, realspeech)),
        "long": (args.data_dir / "long_real.wav", long_file(args.data_dir, realspeech)),
    }
    inputs = {name: inputs[name] for name in args.only.split(",")}
    audio_s = {name: sum(audio_duration_s(p) for p in _audio_paths(path)) for name, (path, _) in inputs.items()}
    scratch_root = Path(tempfile.mkdtemp(prefix="steadyscribe-whole-run-"))
    commands = systems(str(provision("tiny.en", "ctranslate2")), scratch_root)
    env = {**os.environ, "PREFECT_HOME": str(scratch_root / "prefect-home"), "STEADYSCRIBE_LOG_DIR": str(scratch_root / "logs"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # A scheduled deployment talks to a Prefect server that is already up: that run skips the
    # temporary server's start and stop (the server's own memory is then not in the tree).
    standing_env = {**env, "PREFECT_HOME": str(scratch_root / "standing-home"),
                    "PREFECT_API_URL": f"http://127.0.0.1:{STANDING_PORT}/api"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--port", str(STANDING_PORT)], env=standing_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(f"http://127.0.0.1:{STANDING_PORT}/api/health")
    # Untimed warm-up: Prefect's database, the OS file cache of both systems' libraries and weights.
    warm_input = inputs[next(iter(inputs))][0]
    for label, command in commands.items():
        scratch = scratch_root / "warm" / label.replace(" ", "_")
        scratch.mkdir(parents=True)
        subprocess.run(command(warm_input if warm_input.is_file() else next(_audio_paths(warm_input)), scratch)[0],
                       env=standing_env if label == STANDING else env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    load_start = os.getloadavg()
    runs = []
    for round_index in range(args.rounds):
        for input_name, (path, references) in inputs.items():
            for label, command in commands.items():
                scratch = scratch_root / f"{round_index}-{input_name}-{label.replace(' ', '_')}"
                scratch.mkdir(parents=True)
                argv, read_words = command(path, scratch)
                result = timed(argv, standing_env if label == STANDING else env)
                if result["exit"] == 0:
                    texts = read_words()
                    result["wer"] = corpus_wer((reference, texts.get(name, "")) for name, reference in references.items())
                result.update(input=input_name, system=label, round=round_index, audio_s=audio_s[input_name])
                runs.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "stderr_tail"}), flush=True)
    server.terminate()
    server.wait(timeout=60)
    report = {
        "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.whole_run " + " ".join(sys.argv[1:]),
        "audio_s": audio_s,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whole_run.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, args.out)
    plot(report, args.out / "whole_run-throughput_vs_memory.png")
    shutil.rmtree(scratch_root, ignore_errors=True)


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


def _audio_paths(path: Path):
    return iter([path]) if path.is_file() else iter(sorted(p for p in path.iterdir() if p.suffix in (".wav", ".flac")))


def audio_duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0)) / SAMPLE_RATE


def summary(report: dict) -> dict[tuple[str, str], dict]:
    """Per (input, system): the median wall time over rounds, the largest peaks, the WER."""
    table: dict[tuple[str, str], dict] = {}
    for run in report["runs"]:
        table.setdefault((run["input"], run["system"]), {"runs": []})["runs"].append(run)
    for (input_name, _), row in table.items():
        ok = [r for r in row["runs"] if r["exit"] == 0]
        row["failed"] = len(row["runs"]) - len(ok)
        if ok:
            row["wall_s"] = float(np.median([r["wall_s"] for r in ok]))
            row["throughput"] = report["audio_s"][input_name] / row["wall_s"]
            row["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in ok)
            row["tree_peak_rss_bytes"] = max(r["tree_peak_rss_bytes"] for r in ok)
            row["wer"] = ok[0].get("wer")
    return table


def write_markdown(report: dict, out: Path) -> None:
    table = summary(report)
    lines = [
        "**Machine:** " + machine_line(report["machine"], report["date"]),
        "",
        "| input | system | wall s (median) | audio s / s | × faster-whisper b1 | peak RSS, time -v (MiB) | tree RSS peak (MiB) | WER |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for (input_name, system), row in table.items():
        if "wall_s" not in row:
            lines.append(f"| {input_name} | {system} | failed | | | | | |")
            continue
        peer = table.get((input_name, "faster-whisper batched int8 b8, beam 1"), {})
        ratio = f"{peer['wall_s'] / row['wall_s']:.2f}" if peer.get("wall_s") else "–"
        wer = f"{row['wer']:.1%}" if row.get("wer") is not None else "–"
        lines.append(
            f"| {input_name} ({report['audio_s'][input_name]:.0f} s of audio) | {system} | {row['wall_s']:.1f} | "
            f"{row['throughput']:.1f} | {ratio} | {row['peak_rss_bytes'] / 2**20:.0f} | {row['tree_peak_rss_bytes'] / 2**20:.0f} | {wer} |"
        )
    lines += ["", f"Command: `{report['command']}`; each figure is the median of the rounds' wall times (start to exit).", ""]
    (out / "whole_run.md").write_text("\n".join(lines))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary(report)
    inputs = list(dict.fromkeys(i for i, _ in table))
    figure, axes = plt.subplots(1, len(inputs), figsize=(5 * len(inputs), 4), squeeze=False)
    for axis, input_name in zip(axes[0], inputs):
        for (name, system), row in table.items():
            if name == input_name and "wall_s" in row:
                axis.scatter(row["tree_peak_rss_bytes"] / 2**20, row["throughput"], label=system)
        axis.set(title=f"{input_name} ({report['audio_s'][input_name]:.0f} s of audio)", xlabel="peak RSS of the process tree (MiB)",
                 ylabel="audio seconds per wall second, whole run")
        axis.set_xlim(left=0)
        axis.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
