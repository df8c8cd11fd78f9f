"""Every input exactly once: a recording is its content, a name is taken as given, and runs that
overlap in one output transcribe each recording once (tasks/discover.py, steadyscribe/claims.py).

The end-to-end tests run `steadyscribe run` as a subprocess on short real recordings with the
real tiny.en, then check the two promises of the tables: the README's words/files join gives
each word once, and every input path the user gave has its row in `files`.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

import duckdb
import fsspec
import pytest

from helpers import FIXTURES, REAL, api_env, documented_query, run_cli, run_command
from steadyscribe.records import DecodedAudio, FileOutcome, PassedOver
from steadyscribe.storage import filesystem_for
from steadyscribe import claims
from steadyscribe.claims import GroupClaims, claim_dir, create_exclusive, latest_claim
from steadyscribe.tasks.discover import discover, local_path, normalise_url
from steadyscribe.tasks.report import summarize, summary_markdown, summary_text
from steadyscribe.schema import open_table

# Short recordings, so that each run's inference takes seconds.
SHORT = ["r26_goforward", "r13_libri_61", "fast_speaker", "r01_jfk"]

README_JOIN = """
SELECT f.source, w.word, w.start, w."end", w.probability, w.run_id, w.file_id, w.segment_index, w.word_index
FROM words AS w
JOIN files AS f USING (run_id, file_id)
WHERE f.status = 'ok'
"""


def recording(name: str) -> Path:
    return REAL / f"{name}.flac" if (REAL / f"{name}.flac").exists() else FIXTURES / f"{name}.flac"


def steadyscribe_run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = run_cli(list(args), cwd=cwd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def tables(output: str, storage_options: dict | None = None) -> tuple[list[dict], int, list[tuple]]:
    """The files rows, the words rows, and the README's join (run over the same tables with DuckDB)."""
    files = open_table(output, "files", storage_options).to_table()
    words = open_table(output, "words", storage_options).to_table()
    joined = duckdb.sql(README_JOIN).fetchall()
    return files.to_pylist(), words.num_rows, joined


def assert_each_word_once(output: str, storage_options: dict | None = None) -> list[dict]:
    """Each recording transcribed once per settings in the output, and the README's join gives each word once."""
    rows, words_n, joined = tables(output, storage_options)
    ok = [r for r in rows if r["status"] == "ok"]
    keys = [(r["file_id"], r["settings_key"]) for r in ok]
    assert len(keys) == len(set(keys)), f"a recording was transcribed twice: {sorted(keys)}"
    word_keys = [row[-4:] for row in joined]
    assert len(word_keys) == len(set(word_keys)), "the README's join repeats words"
    assert len(joined) == sum(r["words_n"] for r in ok) == words_n
    return rows


def assert_accounted(rows: list[dict], run_id: str, given: set[str]) -> dict[str, dict]:
    """Every path given to the run has exactly one row of that run, and a duplicate points at the row with its words."""
    mine = [r for r in rows if r["run_id"] == run_id]
    by_source = {r["source"]: r for r in mine}
    assert len(by_source) == len(mine), "a path has two rows in one run"
    assert set(by_source) == given
    for row in mine:
        if row["status"] == "duplicate":
            source = by_source[row["duplicate_of"]]
            assert (source["status"], source["file_id"]) == ("ok", row["file_id"])
        else:
            assert row["duplicate_of"] is None
    return by_source


def run_id_of(done: subprocess.CompletedProcess) -> str:
    return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("run "))


# ---- names ------------------------------------------------------------------------------------


def test_spellings_of_a_path_are_one_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "r01.flac").write_bytes(b"x")
    spellings = ["in/a/../r01.flac", "in/./r01.flac", "in//r01.flac", "in/r01.flac", str(tmp_path / "in/r01.flac")]
    found = discover(spellings)
    assert [f.source for f in found.files] == [str(tmp_path / "in/r01.flac")]
    assert [(p.reason, p.count) for p in found.passed_over] == [
        ("named twice (another spelling of the same path, or overlapping inputs)", 4)
    ]


def test_dot_dot_after_a_linked_folder_keeps_its_meaning(tmp_path):
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "real" / "x.flac").write_bytes(b"real")
    (tmp_path / "x.flac").write_bytes(b"other")
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    # link/.. is real/ to the operating system, not tmp_path/ as the text says.
    assert local_path(str(tmp_path / "link/../x.flac")) == str(tmp_path / "real/x.flac")
    assert local_path(str(tmp_path / "real/deep/../x.flac")) == str(tmp_path / "real/x.flac")


def test_urls_are_normalised_without_changing_their_meaning():
    assert normalise_url("HTTP://Host.Example:80/a/./b/../c%2f.flac?version=2&x=%2F") == (
        "http://host.example/a/c%2F.flac?version=2&x=%2F"
    )
    assert normalise_url("https://host:8443//a.flac?v=1#t=3") == "https://host:8443//a.flac?v=1#t=3"
    assert normalise_url("s3://bucket/a/./b.flac") == "s3://bucket/a/./b.flac"  # a key, not a path


def test_existing_names_are_literal_and_patterns_only_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for name in ["take[1].flac", "take1.flac", "notes.txt", ".hidden.flac"]:
        (tmp_path / "d" / name).write_bytes(name.encode())
    calls = tmp_path / "[2026] calls"
    calls.mkdir()
    (calls / "c.flac").write_bytes(b"c")
    assert [f.source for f in discover(["d/take[1].flac"]).files] == [str(tmp_path / "d/take[1].flac")]
    assert [f.source for f in discover(["d/take?.flac"]).files] == [str(tmp_path / "d/take1.flac")]
    assert [f.source for f in discover(["[2026] calls"]).files] == [str(calls / "c.flac")]
    found = discover(["d"])
    assert [f.source for f in found.files] == [str(tmp_path / "d" / n) for n in ["take1.flac", "take[1].flac"]]
    assert {p.reason: (p.count, p.first) for p in found.passed_over} == {
        "not an audio extension": (1, (str(tmp_path / "d/notes.txt"),)),
        "hidden (dot) file": (1, (str(tmp_path / "d/.hidden.flac"),)),
    }


def test_remote_names_are_literal_too(s3_bucket, s3_options):
    fs, _ = filesystem_for(f"s3://{s3_bucket}", s3_options)
    for name in ["d/take[1].flac", "d/take1.flac", "[2026] calls/c.flac", "[2026] calls/c.txt"]:
        fs.pipe_file(f"{s3_bucket}/{name}", b"x")
    found = discover([f"s3://{s3_bucket}/d/take[1].flac", f"s3://{s3_bucket}/[2026] calls"], storage_options=s3_options)
    assert [f.source for f in found.files] == [f"s3://{s3_bucket}/[2026] calls/c.flac", f"s3://{s3_bucket}/d/take[1].flac"]
    assert [(p.reason, p.count) for p in found.passed_over] == [("not an audio extension", 1)]


def test_links_in_folders_are_followed_and_loops_end(tmp_path):
    outside, folder = tmp_path / "outside", tmp_path / "folder"
    outside.mkdir()
    folder.mkdir()
    (outside / "target.flac").write_bytes(b"t")
    (folder / "link.flac").symlink_to(outside / "target.flac")
    (folder / "dangling.flac").symlink_to(outside / "gone.flac")
    (folder / "loop").symlink_to(folder)
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)
    os.mkfifo(folder / "pipe.flac")
    found = discover([str(folder)])
    assert [(f.source, f.size) for f in found.files] == [(str(folder / "dangling.flac"), None), (str(folder / "link.flac"), 1)]
    reasons = {p.reason: p.count for p in found.passed_over}
    assert reasons == {"link to a folder already searched (a loop, or a second name for it)": 2, "not a regular file": 1}


def test_the_summary_says_what_was_passed_over_and_what_was_a_duplicate():
    outcomes = [FileOutcome("/in/a.flac", "ok", 3.0), FileOutcome("/in/b.flac", "duplicate", 3.0)]
    names = tuple(f"/in/n{i}.txt" for i in range(5))
    summary = summarize("run-1", "out", {}, outcomes, 1.0, passed_over=[PassedOver("not an audio extension", 7, names)])
    assert summary.files_duplicate == 1 and summary.audio_s == 3.0
    text = summary_text(summary)
    assert "files: 1 ok, 0 failed, 0 skipped, 1 duplicate" in text
    assert "passed over 7: not an audio extension (/in/n0.txt, /in/n1.txt, /in/n2.txt, /in/n3.txt, /in/n4.txt and 2 more)" in text
    assert "| not an audio extension | 7 | /in/n0.txt, " in summary_markdown(summary)


# ---- claims -----------------------------------------------------------------------------------


def decoded(source: str, file_id: str = "f" * 64) -> DecodedAudio:
    return DecodedAudio(source, "ok", file_id=file_id, pcm_path="/nowhere", duration_s=1.0)


def write_claim(output: Path, file_id: str, attempt: int = 0, **fields) -> None:
    claim = {
        "run_id": "other-run", "source": "/x/a.flac", "host": socket.gethostname(), "pid": os.getpid(),
        "process_started": claims._own_start_time(), "claimed_at": "2026-12-06T00:00:00+00:00",
        "expires_at": time.time() + 600, "state": "held", "pid_namespace": claims.pid_namespace(),
    } | fields
    directory = Path(claim_dir(str(output), "key", file_id))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{attempt:06d}.json").write_text(json.dumps(claim))


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_claim_is_created_once(store, tmp_path, request):
    if store == "s3":
        bucket, options = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_options")
        fs, root = filesystem_for(f"s3://{bucket}/out", options)
    else:
        fs, root = filesystem_for(str(tmp_path / "out"))
    path = f"{root}/_claims/k/f/000000.json"
    assert create_exclusive(fs, path, b'{"first": 1}', f"{root}/_tmp")
    assert not create_exclusive(fs, path, b'{"second": 2}', f"{root}/_tmp")
    assert fs.cat_file(path) == b'{"first": 1}'


def test_copies_in_one_run_are_duplicates(tmp_path):
    group = GroupClaims(str(tmp_path), "run-1", "key")
    first, second = group.resolve([decoded("/in/a.flac"), decoded("/in/b_copy.flac")])
    assert (first.status, second.status, second.duplicate_of) == ("ok", "duplicate", "/in/a.flac")
    # Another group of the same run meets the same content under a third name.
    (third,) = GroupClaims(str(tmp_path), "run-1", "key").resolve([decoded("/in/c.flac")])
    assert (third.status, third.duplicate_of) == ("duplicate", "/in/a.flac")
    group.release()


def test_held_claims_are_renewed_and_settled(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "RENEW_EVERY_S", 0.05)
    fs, directory = fsspec.filesystem("file"), claim_dir(str(tmp_path), "key", "f" * 64)
    group = GroupClaims(str(tmp_path), "run-1", "key")
    group.resolve([decoded("/in/a.flac"), decoded("/in/b.flac", file_id="e" * 64)])
    first = latest_claim(fs, directory)[1].expires_at
    deadline = time.monotonic() + 30
    while latest_claim(fs, directory)[1].expires_at == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert latest_claim(fs, directory)[1].expires_at > first
    group.settle([FileOutcome("/in/a.flac", "ok"), FileOutcome("/in/b.flac", "failed", error="x")])
    assert latest_claim(fs, directory)[1].state == "committed"
    assert latest_claim(fs, claim_dir(str(tmp_path), "key", "e" * 64)) is None  # released for the next run


def test_a_live_claim_of_another_run_is_respected(tmp_path):
    write_claim(tmp_path, "f" * 64)
    (item,) = GroupClaims(str(tmp_path), "run-2", "key").resolve([decoded("/in/a.flac")])
    assert item.status == "skipped"
    assert "being transcribed by run other-run (from /x/a.flac" in item.warnings[0]


@pytest.fixture
def other_process():
    sleeper = subprocess.Popen(["sleep", "60"])
    yield sleeper.pid
    sleeper.kill()
    sleeper.wait()


@pytest.mark.parametrize(
    "claim",
    [
        {"pid": 2**22 + 1},  # its process is gone
        {"pid": "other", "process_started": 1.0},  # its pid now belongs to another process
        {"host": "elsewhere", "expires_at": time.time() - 1},  # another host, lease run out
        {"state": "committed"},  # committed, but the table holds no ok row for it
    ],
)
def test_a_dead_or_stale_claim_is_taken_over(tmp_path, claim, other_process):
    write_claim(tmp_path, "f" * 64, **(claim | ({"pid": other_process} if claim.get("pid") == "other" else {})))
    group = GroupClaims(str(tmp_path), "run-2", "key")
    (item,) = group.resolve([decoded("/in/a.flac")])
    assert item.status == "ok"
    attempt, taken = latest_claim(fsspec.filesystem("file"), claim_dir(str(tmp_path), "key", "f" * 64))
    assert (attempt, taken.run_id, taken.state) == (1, "run-2", "held")
    group.release()
    assert latest_claim(fsspec.filesystem("file"), claim_dir(str(tmp_path), "key", "f" * 64))[0] == 0


def test_a_file_that_is_not_a_claim_holds_nothing(tmp_path):
    directory = Path(claim_dir(str(tmp_path), "key", "f" * 64))
    directory.mkdir(parents=True)
    (directory / "000000.json").write_text("not json")
    (directory / "notes.txt").write_text("someone else's file")
    (item,) = GroupClaims(str(tmp_path), "run-2", "key").resolve([decoded("/in/a.flac")])
    assert item.status == "ok" and (directory / "000001.json").exists()


@pytest.mark.parametrize(
    "holder", [{"host": "elsewhere", "pid": 1}, {"pid_namespace": 1, "pid": 2**22 + 1}], ids=["host", "container"]
)
def test_a_claim_on_another_host_is_live_until_its_lease_ends(tmp_path, holder):
    write_claim(tmp_path, "f" * 64, **holder)
    (item,) = GroupClaims(str(tmp_path), "run-2", "key").resolve([decoded("/in/a.flac")])
    assert item.status == "skipped"


# ---- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_spellings_and_two_copies_are_transcribed_once(prefect_server, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "a").mkdir(parents=True)
    (inputs / "copies").mkdir()
    shutil.copy(recording("r13_libri_61"), inputs / "r01.flac")
    shutil.copy(recording("r13_libri_61"), inputs / "copies" / "a.flac")
    shutil.copy(recording("r13_libri_61"), inputs / "copies" / "b_copy.flac")
    spellings = ["in/a/../r01.flac", "in/./r01.flac", "in//r01.flac", "in/r01.flac"]
    done = steadyscribe_run(*spellings, "in/copies", "--output", "out", cwd=tmp_path)
    assert "files: 1 ok, 0 failed, 0 skipped, 2 duplicate" in done.stdout
    assert "passed over 3: named twice" in done.stdout

    output = str(tmp_path / "out")
    rows = assert_each_word_once(output)
    given = {str(inputs / "r01.flac"), str(inputs / "copies/a.flac"), str(inputs / "copies/b_copy.flac")}
    by_source = assert_accounted(rows, run_id_of(done), given)
    assert sorted(r["status"] for r in by_source.values()) == ["duplicate", "duplicate", "ok"]
    assert {local_path(str(tmp_path / s)) for s in spellings} == {str(inputs / "r01.flac")}
    assert next(r for r in rows if r["status"] == "ok")["words_n"] >= 5
    # docs/tables.md's query finds the words of every path given.
    paths = duckdb.sql(documented_query("every path of a run and the row that holds its words", tmp_path / "out")
                       .replace("20261125T020000Z-3f9c2a1b", run_id_of(done))).fetchall()
    ok_source = next(r["source"] for r in rows if r["status"] == "ok")
    words_n = next(r["words_n"] for r in rows if r["status"] == "ok")
    assert sorted(p[0] for p in paths) == sorted(given)
    assert {(p[2], p[3]) for p in paths} == {(ok_source, words_n)}


@pytest.fixture
def http_folder(tmp_path):
    """A loopback HTTP server (ignores query strings, as static file servers do) over a folder."""
    folder = tmp_path / "web"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_names_are_taken_as_given(prefect_server, tmp_path, http_folder):
    """`take[1].flac` beside `take1.flac`, a folder `[2026] calls`, a URL with a query string, a link in a folder."""
    web, base = http_folder
    d, calls, outside = tmp_path / "d", tmp_path / "[2026] calls", tmp_path / "outside"
    for folder in (d, calls, outside):
        folder.mkdir()
    shutil.copy(recording("r26_goforward"), d / "take[1].flac")
    shutil.copy(recording("r01_jfk"), d / "take1.flac")  # not named: must not be transcribed
    shutil.copy(recording("r13_libri_61"), calls / "call.flac")
    (calls / "notes.txt").write_text("agenda")
    shutil.copy(recording("fast_speaker"), outside / "linked.flac")
    (calls / "linked.flac").symlink_to(outside / "linked.flac")
    (calls / "again").symlink_to(calls)
    shutil.copy(recording("r15_ljspeech") if (REAL / "r15_ljspeech.flac").exists() else recording("noisy"), web / "a.flac")
    url = f"{base}/a.flac?version=2"

    done = steadyscribe_run("d/take[1].flac", "[2026] calls", url, "--output", "out", cwd=tmp_path)
    assert "files: 4 ok, 0 failed, 0 skipped" in done.stdout
    assert f"passed over 1: not an audio extension ({calls / 'notes.txt'})" in done.stdout
    assert "passed over 1: link to a folder already searched" in done.stdout

    rows = assert_each_word_once(str(tmp_path / "out"))
    given = {str(d / "take[1].flac"), str(calls / "call.flac"), str(calls / "linked.flac"), url}
    by_source = assert_accounted(rows, run_id_of(done), given)
    assert all(row["status"] == "ok" and row["words_n"] > 0 for row in by_source.values())
    # The file named, not the one a glob would have picked: "go forward" is in take[1].flac.
    words = " ".join(w for (w,) in duckdb.sql(
        f"SELECT word FROM read_parquet('{tmp_path}/out/words/**/*.parquet') WHERE source = '{d / 'take[1].flac'}'"
    ).fetchall()).lower()
    assert "forward" in words


def concurrent_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two folders of inputs that share a third: shared/ holds three recordings, only1/ and only2/ one each."""
    shared, only1, only2 = tmp_path / "shared", tmp_path / "only1", tmp_path / "only2"
    for folder in (shared, only1, only2):
        folder.mkdir()
    for name in SHORT[:3]:
        shutil.copy(recording(name), shared / f"{name}.flac")
    shutil.copy(recording("r01_jfk"), only1 / "jfk.flac")
    shutil.copy(recording("clean_gb"), only2 / "gb.flac")
    return shared, only1, only2


def run_two_at_once(tmp_path: Path, output: str, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    shared, only1, only2 = concurrent_inputs(tmp_path)
    logs = [(tmp_path / f"run{i}.log").open("w+") for i in (1, 2)]
    runs = [
        subprocess.Popen(run_command(str(shared), str(only), "--output", output), env=env, stdout=log, stderr=subprocess.STDOUT)
        for only, log in zip((only1, only2), logs, strict=True)
    ]
    finished = []
    for run, log in zip(runs, logs, strict=True):
        code = run.wait(timeout=600)
        log.seek(0)
        text = log.read()
        assert code == 0, text[-3000:]
        finished.append(subprocess.CompletedProcess(run.args, code, text, ""))
    return finished


def assert_overlap_transcribed_once(tmp_path: Path, output: str, runs: list[subprocess.CompletedProcess], options=None):
    shared, only1, only2 = tmp_path / "shared", tmp_path / "only1", tmp_path / "only2"
    rows = assert_each_word_once(output, options)
    shared_sources = {str(shared / f"{name}.flac") for name in SHORT[:3]}
    first = assert_accounted(rows, run_id_of(runs[0]), shared_sources | {str(only1 / "jfk.flac")})
    second = assert_accounted(rows, run_id_of(runs[1]), shared_sources | {str(only2 / "gb.flac")})
    for source in shared_sources:
        statuses = sorted([first[source]["status"], second[source]["status"]])
        assert statuses == ["ok", "skipped"], (source, statuses)
    assert first[str(only1 / "jfk.flac")]["status"] == second[str(only2 / "gb.flac")]["status"] == "ok"


@pytest.mark.slow
def test_two_concurrent_runs_transcribe_each_recording_once(prefect_server, tmp_path):
    output = str(tmp_path / "out")
    runs = run_two_at_once(tmp_path, output, api_env())
    assert_overlap_transcribed_once(tmp_path, output, runs)


@pytest.mark.slow
def test_two_concurrent_runs_into_s3_transcribe_each_recording_once(prefect_server, tmp_path, s3_bucket, s3_options):
    output = f"s3://{s3_bucket}/transcripts"
    env = api_env(FSSPEC_S3=json.dumps(s3_options))
    runs = run_two_at_once(tmp_path, output, env)
    assert_overlap_transcribed_once(tmp_path, output, runs, s3_options)
    fs, root = filesystem_for(output, s3_options)
    assert fs.find(f"{root}/_claims")  # committed claims stay as the record of what is done
