"""Fault suite of `gptscale shard`: kill -9 at every labelled point of the writer, and a seeded campaign of
kills at random moments; every rerun must give the very bytes (every shard + manifest) of an uninterrupted run
and leave no temporary file or journal behind."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gptscale.data.shards  # noqa: F401 (declares the shard writer's labelled kill points)
from gptscale.runtime import faults
from helpers import REPO, SHARD_ARGS, child_env, fault_env

pytestmark = pytest.mark.faults

SHARD_LABELS = sorted(name for name in faults.LABELS if name.startswith("shard."))
ONCE = {"shard.after_manifest_temp", "shard.after_manifest_rename"}
"""Points passed once per run (killed at their 1st pass); the others are passed per shard (killed at the 3rd)."""
CAMPAIGN_SEED, CAMPAIGN_RUNS = 20261204, 8


def shard_cmd(books: list[Path], tok_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gptscale", "shard", "--input", *map(str, books), "--tokenizer", str(tok_dir),
            "--out", str(out), *SHARD_ARGS, "--workers", "2"]


def run(cmd: list[str], **faults_env: str) -> subprocess.CompletedProcess:
    """The command in its own process group (kill_job_at kills that group: the writer and its workers)."""
    return subprocess.run(cmd, env=child_env(**faults_env), capture_output=True, text=True, timeout=300,
                          start_new_session=True, cwd=str(REPO), check=False)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_same_as(out: Path, reference: Path) -> None:
    """Byte for byte the reference folder: the same names (no temp file, no journal left) and contents."""
    got, want = files_of(out), files_of(reference)
    assert sorted(got) == sorted(want), sorted(set(got) ^ set(want))
    assert [n for n in want if got[n] != want[n]] == []


def test_every_shard_writer_point_is_covered():
    # the points the journal design needs (a new point is picked up by the tests below on its own)
    assert {"shard.after_shard_temp", "shard.after_shard_rename", "shard.after_journal_temp",
            "shard.after_journal_rename", "shard.after_manifest_temp", "shard.after_manifest_rename"} <= \
        set(SHARD_LABELS)


@pytest.mark.parametrize("label", SHARD_LABELS)
def test_kill_at_point_then_rerun_gives_identical_bytes(label, tmp_path, shard_dir, shard_books, tok_dir):
    out = tmp_path / "out"
    cmd = shard_cmd(shard_books, tok_dir, out)
    nth = 1 if label in ONCE else 3
    p = run(cmd, **fault_env(kill_job_at=f"{label}:{nth}"))
    assert p.returncode == -signal.SIGKILL, f"no kill at {label}:{nth} (rc {p.returncode}); passed fewer " \
        f"times? list it in ONCE\n{p.stderr[-2000:]}"
    left = {q.name for q in out.iterdir()}
    if label.endswith("_temp"):  # the killed run left a temporary file: the rerun must remove it
        assert any(n.endswith(".tmp") for n in left), left
    assert ("manifest.json" in left) == (label == "shard.after_manifest_rename")
    p = run(cmd)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_as(out, shard_dir)


def snapshot(out: Path) -> dict[str, int] | None:
    """{name: inode} of the folder's entries (None: changing under our feet, look again)."""
    try:
        return {q.name: q.stat().st_ino for q in out.iterdir()} if out.is_dir() else {}
    except FileNotFoundError:
        return None


def writing_began(out: Path, before: dict[str, int]) -> bool:
    """A file was created or replaced in `out` since `before` (removals, as of stale temp files, do not count)."""
    now = snapshot(out)
    return now is not None and any(before.get(n) != i for n, i in now.items())


def timed_run(cmd: list[str], out: Path) -> tuple[float, float]:
    """Run to completion; (seconds until its first file appeared in `out`, until its manifest did)."""
    t0, first, done = time.monotonic(), None, None
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(REPO))
    while proc.poll() is None:
        if first is None and writing_began(out, {}):
            first = time.monotonic() - t0
        if done is None and (out / "manifest.json").exists():
            done = time.monotonic() - t0
        time.sleep(0.002)
    assert proc.returncode == 0 and first is not None
    return first, (done if done is not None else time.monotonic() - t0)


def kill_at_random(cmd: list[str], out: Path, rng: random.Random, first_write: float, done: float,
                   whole_run: bool) -> str:
    """Start the job and SIGKILL its process group at a random moment: uniformly over a whole run if
    `whole_run`, else uniformly over the writing phase (first file to manifest) once the job changed a file
    in `out`. Returns what the kill hit: 'finished' (it exited first), 'killed_before_writing',
    'killed_mid_writing' (files changed, no manifest yet) or 'killed_after_manifest' (before it exited)."""
    before = snapshot(out) or {}
    had_manifest = (out / "manifest.json").exists()
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(REPO))
    if whole_run:
        deadline = time.monotonic() + rng.uniform(0, 1.1 * done)
    else:
        while proc.poll() is None and not writing_began(out, before):
            time.sleep(0.001)
        deadline = time.monotonic() + rng.uniform(0, 1.1 * (done - first_write))
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if proc.poll() is not None:
        return "finished"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job (writer and tokenizer workers) at that instant
    proc.wait()
    after = snapshot(out)  # nothing moves now: no race with a rename
    if not any(before.get(n) != i for n, i in after.items()):
        return "killed_before_writing"
    return "killed_after_manifest" if (out / "manifest.json").exists() and not had_manifest else "killed_mid_writing"


def test_random_kill_campaign(tmp_path, shard_dir, shard_books, tok_dir, capsys):
    rng = random.Random(CAMPAIGN_SEED)
    ref = tmp_path / "ref"
    first_write, done = timed_run(shard_cmd(shard_books, tok_dir, ref), ref)
    assert_same_as(ref, shard_dir)
    figures = {"kills_tried": 0, "finished": 0, "killed_before_writing": 0, "killed_mid_writing": 0,
               "killed_after_manifest": 0, "mismatches": 0}
    for i in range(CAMPAIGN_RUNS):
        out = tmp_path / f"k{i}"
        cmd = shard_cmd(shard_books, tok_dir, out)
        for _ in range(1 + (rng.random() < 0.5)):  # half the runs are killed again while resuming
            figures["kills_tried"] += 1  # every 4th kill at any moment of a run, the others while it writes
            figures[kill_at_random(cmd, out, rng, first_write, done, whole_run=figures["kills_tried"] % 4 == 1)] += 1
        p = run(cmd)
        assert p.returncode == 0, p.stderr[-3000:]
        figures["mismatches"] += files_of(out) != files_of(shard_dir)
    with capsys.disabled():
        print(f"\nshard kill campaign (seed {CAMPAIGN_SEED}; uninterrupted run: first file at {first_write:.1f}s, "
              f"manifest at {done:.1f}s): {figures}")
    assert figures["mismatches"] == 0
    assert figures["killed_mid_writing"] >= figures["kills_tried"] // 3  # it did hit the writer mid-run
