"""Do two revisions write the same three tables? The check that a refactor changed no output.

    .venv/bin/python -m bench.same_tables --before main --after WORKTREE

Each side's code is taken from git (`--before`/`--after` REV) or from the working tree as it is
(`WORKTREE`, uncommitted changes included) and laid out as an installed package, following that
revision's own pyproject.toml (`[tool.setuptools.package-dir]`, `[project.scripts]`), in a
temporary folder put first on PYTHONPATH; both sides run on this checkout's .venv, so a change of
dependencies is not compared. The script prints where each side's modules were imported from,
and stops if any came from elsewhere.

Each side runs `steadyscribe run` twice into a fresh output, on the same inputs with the same
profile and batch size: real recordings (one of them two windows long), a second name of one of
them, the first half of one (ok, with a warning) and a file that is not audio. The first run
writes `ok`, `duplicate` and `failed` rows, the second `skipped` and `failed` rows. Then the files,
segments and words tables are compared row by row, without the columns that differ between any
two runs (IGNORED). Any other difference, in a value, a column or a row, or in the runs' exit
statuses, is printed and the exit status is 1; 2 when a side could not be set up or run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from io import BytesIO
from pathlib import Path

import pyarrow.dataset as ds

from bench.common import ROOT, add_realspeech_option, realspeech_dir

WORKTREE = "WORKTREE"
TABLES = ("files", "segments", "words")
# Columns that differ between two runs of the same code on the same input, and why. Everything else
# is compared, settings_key too: a new key makes the next run transcribe every file again.
IGNORED = {
    "files": {
        "run_id",  # the run's start time and a random suffix (its ordinal replaces it: see normalised)
        "started_at", "finished_at",  # wall-clock times
        "decode_s", "infer_s",  # durations: depend on the machine's load
        "worker",  # host:pid of the process that did the work
        "run_date",  # the partition: the day the run started, which may change between the two sides
    },
    "segments": {"run_id", "run_date"},
    "words": {"run_id", "run_date"},
}
# A row's identity within a side: the run (by ordinal), then its place in the table.
KEYS = {
    "files": ("run", "source"),
    "segments": ("run", "source", "channel", "segment_index"),
    "words": ("run", "source", "channel", "segment_index", "word_index"),
}
RECORDINGS = ["r01_jfk", "r13_libri_61", "r24_arctic_aew", "r26_goforward", "r10_sonnet1"]  # r10: 53 s, two windows
SECOND_NAME = ("r26_goforward", "r26_goforward_again.flac")  # the same content again: a duplicate row
CUT = ("r24_arctic_aew", "r24_arctic_aew_cut.flac")  # its first half of the bytes: an ok row that warns
NOT_AUDIO = b"fLaC" + bytes(range(256)) * 8  # a FLAC signature and then nothing a decoder accepts: a failed row
RUNS = 2  # the second run into the same output skips what the first transcribed
MAX_PRINTED = 40  # differences printed per table


class CannotCompare(Exception):
    """A side could not be set up or run: exit status 2, not a difference."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.same_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a git revision, or WORKTREE for the working tree")
    parser.add_argument("--after", default=WORKTREE, help="a git revision, or WORKTREE (default)")
    parser.add_argument("--profile", default="cpu-fast", help="the profile both sides run (default cpu-fast)")
    parser.add_argument("--batch-size", default="4",
                        help="fixed, so that neither side sizes its batches by the memory free at that moment (default 4)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the inputs, code and outputs in this folder")
    add_realspeech_option(parser)
    return parser.parse_args(argv)


# ---- each side's code ----------------------------------------------------------------------------


def pyproject_of(revision: str) -> dict:
    if revision == WORKTREE:
        return tomllib.loads((ROOT / "pyproject.toml").read_text())
    return tomllib.loads(git("show", f"{revision}:pyproject.toml"))


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise CannotCompare(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def package_folders(pyproject: dict) -> dict[str, str]:
    """Package name -> its folder in the repository, for the packages that are not inside another one's folder."""
    tool = pyproject["tool"]["setuptools"]
    mapped = tool.get("package-dir", {})
    folders = {}
    for package in tool["packages"]:
        if package in mapped:
            folders[package] = mapped[package]
        elif "." not in package:
            folders[package] = package.replace(".", "/")
    return folders


def stage_code(revision: str, target: Path) -> tuple[Path, str]:
    """`revision`'s packages laid out under target/site as setuptools installs them; its entry point."""
    pyproject = pyproject_of(revision)
    folders = package_folders(pyproject)
    source = target / "source"
    if revision == WORKTREE:
        source = ROOT
    else:
        source.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", revision, "--", *folders.values()], cwd=ROOT, capture_output=True)
        if archive.returncode != 0:
            raise CannotCompare(f"git archive {revision}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(source, filter="data")
    site = target / "site"
    # Outer packages first, so that a mapped subpackage lands inside its parent's copy.
    for package, folder in sorted(folders.items(), key=lambda item: item[0].count(".")):
        destination = site / package.replace(".", "/")
        if destination.exists():
            shutil.rmtree(destination)
        shutil.copytree(source / folder, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # Every process of the run (engine and decoder children too) starts with this on its path: this
    # checkout's editable install must not answer for a module the staged code lacks.
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
    )
    [entry] = [value for name, value in pyproject["project"]["scripts"].items() if name == "steadyscribe"]
    return site, entry


def check_imported_from(site: Path, packages: list[str], env: dict[str, str]) -> None:
    """Import each package as the runs will, and stop unless every one comes from `site`."""
    code = (
        "import importlib, json, sys; print(json.dumps({p: importlib.import_module(p).__file__ for p in sys.argv[1:]}));"
        "print(any(getattr(f, '__module__', '').startswith('__editable__') for f in sys.meta_path))"
    )
    # Not from the repository: `python -c` puts the current folder first on the path.
    done = subprocess.run([sys.executable, "-c", code, *packages], env=env, cwd=site, capture_output=True, text=True)
    if done.returncode != 0:
        raise CannotCompare(f"importing the staged code failed:\n{done.stderr[-3000:]}")
    imported, editable = done.stdout.splitlines()
    if editable != "False":
        raise CannotCompare("this checkout's editable install is still on the import path")
    for package, file in json.loads(imported).items():
        print(f"  {package:28} {file}")
        if not Path(file).resolve().is_relative_to(site.resolve()):
            raise CannotCompare(f"{package} was imported from {file}, not from {site}")


# ---- the inputs and the runs ---------------------------------------------------------------------


def make_inputs(folder: Path, realspeech: Path) -> None:
    folder.mkdir(parents=True)
    for name in RECORDINGS:
        shutil.copy(realspeech / f"{name}.flac", folder)
    original, again = SECOND_NAME
    shutil.copy(realspeech / f"{original}.flac", folder / again)
    whole, cut = CUT
    data = (realspeech / f"{whole}.flac").read_bytes()
    (folder / cut).write_bytes(data[: len(data) // 2])
    (folder / "not_audio.flac").write_bytes(NOT_AUDIO)


def run_side(name: str, revision: str, work: Path, inputs: Path, args: argparse.Namespace) -> tuple[Path, list[int]]:
    """Both runs of one side; its output folder and the runs' exit statuses."""
    print(f"{name}: {revision}" + ("" if revision == WORKTREE else f" ({git('rev-parse', '--short', revision).strip()})"))
    site, entry = stage_code(revision, work / "code")
    module, function = entry.split(":")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STEADYSCRIBE_"))},
        "PYTHONPATH": str(site),
        # Each side its own Prefect home (an ephemeral API per run), model cache and log folder.
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "STEADYSCRIBE_MODEL_CACHE": str(work / "models"),
        "STEADYSCRIBE_LOG_DIR": str(work / "logs"),
        "HF_HUB_OFFLINE": "1",
    }
    check_imported_from(site, sorted(package_folders(pyproject_of(revision))) + [module], env)
    output, statuses = work / "out", []
    launcher = f"import sys; from {module} import {function} as main; sys.exit(main())"
    for index in range(RUNS):
        command = [sys.executable, "-c", launcher, "run", str(inputs), "--output", str(output),
                   "--profile", args.profile, "--batch-size", args.batch_size]
        done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=3600)
        (work / f"run-{index + 1}.log").write_text(done.stdout + done.stderr)
        print(f"  run {index + 1}: exit status {done.returncode}")
        if done.returncode not in (0, 1):
            raise CannotCompare(f"{name} run {index + 1} did not run:\n{(done.stdout + done.stderr)[-3000:]}")
        statuses.append(done.returncode)
    return output, statuses


# ---- the comparison ------------------------------------------------------------------------------


def normalised(output: Path, table: str) -> tuple[list[str], dict[tuple, dict]]:
    """The table's compared columns, and its rows by key; run ids (in any text) become run 1, run 2."""
    rows = ds.dataset(output / table, format="parquet", partitioning="hive").to_table().to_pylist()
    files = ds.dataset(output / "files", format="parquet", partitioning="hive").to_table(columns=["run_id"])
    ordinal = {run_id: f"run {i + 1}" for i, run_id in enumerate(sorted(set(files.column("run_id").to_pylist())))}

    def plain(value):
        if isinstance(value, str):
            for run_id, name in ordinal.items():
                value = value.replace(run_id, name)
        elif isinstance(value, list):
            value = [plain(item) for item in value]
        return value

    columns = sorted({c for row in rows for c in row} - IGNORED[table])
    keyed = {}
    for row in rows:
        kept = {column: plain(row.get(column)) for column in columns}
        kept["run"] = ordinal.get(row["run_id"], row["run_id"])  # an orphan's run is not in files
        key = tuple(kept.get(k) for k in KEYS[table])
        if key in keyed:
            raise CannotCompare(f"{output}/{table}: two rows with the key {key}")
        keyed[key] = kept
    return columns, keyed


def in_order(key: tuple) -> tuple:
    """Sorts keys with nulls in them (a row without a channel), numbers as numbers."""
    return tuple((value is None, value if value is not None else 0) for value in key)


def differences(before: Path, after: Path, inputs: Path) -> list[str]:
    found = []
    for table in TABLES:
        (columns_b, rows_b), (columns_a, rows_a) = normalised(before, table), normalised(after, table)
        lines = []
        if columns_b != columns_a:
            lines.append(f"columns: only before {sorted(set(columns_b) - set(columns_a))}, "
                         f"only after {sorted(set(columns_a) - set(columns_b))}")
        by_column: dict[str, int] = {}
        for key in sorted(rows_b.keys() | rows_a.keys(), key=in_order):
            shown = str(key).replace(f"{inputs}/", "")
            if key not in rows_a:
                lines.append(f"{shown}: only before")
            elif key not in rows_b:
                lines.append(f"{shown}: only after")
            else:
                for column in sorted(rows_b[key].keys() | rows_a[key].keys()):
                    b, a = rows_b[key].get(column), rows_a[key].get(column)
                    if b != a:
                        lines.append(f"{shown} {column}: before {b!r}, after {a!r}")
                        by_column[column] = by_column.get(column, 0) + 1
        print(f"{table}: {len(rows_b)} rows before, {len(rows_a)} after, "
              f"{len(columns_b)} columns compared, {len(lines)} differences"
              + (f" (values differ in: {', '.join(f'{c} {n}' for c, n in sorted(by_column.items()))})" if by_column else ""))
        for line in lines[:MAX_PRINTED]:
            print(f"  {line}")
        if len(lines) > MAX_PRINTED:
            print(f"  ... and {len(lines) - MAX_PRINTED} more")
        found += [f"{table}: {line}" for line in lines]
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    realspeech = realspeech_dir(args.realspeech)
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        print(f"cannot compare: --keep {args.keep} is not empty", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="same-tables-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        inputs = work / "inputs"
        make_inputs(inputs, realspeech)
        before, statuses_b = run_side("before", args.before, work / "before", inputs, args)
        after, statuses_a = run_side("after", args.after, work / "after", inputs, args)
        found = differences(before, after, inputs)
        if statuses_b != statuses_a:
            found.append(f"exit statuses: before {statuses_b}, after {statuses_a}")
            print(found[-1])
        counts = {}
        for row in normalised(after, "files")[1].values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        print(f"files rows by status: {dict(sorted(counts.items()))}")
        print("the same tables" if not found else f"{len(found)} differences")
        return 1 if found else 0
    except CannotCompare as error:
        print(f"cannot compare: {error}", file=sys.stderr)
        return 2
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
