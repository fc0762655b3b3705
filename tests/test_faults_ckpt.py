"""Fault suite of checkpoints: kill -9 of a 2-rank ZeRO-2 pre-training at every labelled point of a save, a
seeded random-kill campaign, and corruption of each checkpoint file kind. Each case either resumes to losses
identical to an uninterrupted run or ends in a clear error naming the file; no complete checkpoint is lost."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptscale.runtime import checkpoint, faults
from helpers import PRETRAIN, REPO, base_config, child_env, fault_env, gptscale, launch, losses

pytestmark = pytest.mark.faults

STEPS, EVERY = 6, 2
"""Each run: 6 steps, a checkpoint every 2 (steps 2, 4, 6), the last 2 kept."""


def config(tmp: Path, shard_dir: Path, tok_dir: Path, **train) -> Path:
    return base_config(tmp, shard_dir, tok_dir, max_steps=STEPS, checkpoint_interval=EVERY, keep_last=2,
                       eval_interval=0, **train)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, shard_dir, tok_dir) -> Path:
    """The uninterrupted run every case is compared with (its run folder)."""
    tmp = tmp_path_factory.mktemp("straight")
    launch(config(tmp, shard_dir, tok_dir))
    return tmp / "run"


def complete(run: Path) -> list[str]:
    return checkpoint.complete_tags(run / checkpoint.CHECKPOINTS)


def assert_same_losses(run: Path, straight: Path) -> None:
    ref, got = losses(straight), losses(run)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    assert all(got[s] == ref[s] for s in ref), {s: (got[s], ref[s]) for s in ref if got[s] != ref[s]}


def assert_intact(run: Path) -> None:
    ck = run / checkpoint.CHECKPOINTS
    for tag in complete(run):
        assert checkpoint.problems(ck, tag) == [], tag
    assert not [p for p in ck.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("point", checkpoint.KILL_POINTS)
def test_kill_at_each_point_of_a_save_resumes_exactly(point, tmp_path, shard_dir, tok_dir, straight):
    """The whole job SIGKILLed at `point` of its 2nd save (step 4), then `--resume auto`: identical losses."""
    cfg = config(tmp_path, shard_dir, tok_dir)
    p = launch(cfg, env=fault_env(kill_job_at=f"{point}:2"), expect_ok=False)
    assert p.returncode != 0 and max(losses(tmp_path / "run")) == 4  # died inside the step-4 save
    before = complete(tmp_path / "run")
    assert before[-1] in ("step_00000002", "step_00000004")
    out = launch(cfg)
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / before[-1]}" in out.stdout  # the newest complete one
    assert_same_losses(tmp_path / "run", straight)
    assert complete(tmp_path / "run") == ["step_00000004", "step_00000006"]
    assert_intact(tmp_path / "run")


def test_random_kill_campaign(tmp_path, shard_dir, tok_dir, straight, record_property):
    """Seeded: SIGKILL the whole 2-rank job at random moments, resume after each; the chain's losses equal the
    uninterrupted run's, each resume starts at the newest complete checkpoint, none is lost or corrupt."""
    rng, cfg, run = random.Random(20261204), config(tmp_path, shard_dir, tok_dir), tmp_path / "run"
    (tmp_path / "timing").mkdir()
    t0 = time.monotonic()
    launch(config(tmp_path / "timing", shard_dir, tok_dir))
    span = time.monotonic() - t0  # how long one whole run takes here
    kills = landed = 0
    while kills < 8:
        before = complete(run)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", PRETRAIN,
               "--config", str(cfg)]
        proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, cwd=str(REPO))
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.0) * span)
        except subprocess.TimeoutExpired:  # the launcher and every rank (each in a session of its own) at once
            faults.kill_tree([proc.pid, *faults.children(proc.pid)])
            landed += 1
        out = proc.communicate()[0]
        kills += 1
        if before and "resumed from" in out:
            assert f"resumed from {run / 'checkpoints' / before[-1]} " in out  # never a step back
        after = complete(run)
        gone = set(before) - set(after)  # only pruning may remove one: older than the 2 newest kept
        assert all(checkpoint.step_of(t) < checkpoint.step_of(after[-2]) for t in gone), (before, after)
        if proc.returncode == 0:
            break
    out = launch(cfg)
    assert_same_losses(run, straight)
    assert_intact(run)
    record_property("campaign", {"kills": kills, "landed_mid_run": landed, "mismatches": 0, "lost": 0})
    print(f"random-kill campaign: {kills} kills tried, {landed} landed mid-run, 0 mismatches, 0 checkpoints lost")


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10  # one bit of one byte
    path.write_bytes(bytes(data))


FILE_KINDS = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_rank0.pt", "rng_rank1.pt", "gptscale.json"]


@pytest.mark.parametrize("name", FILE_KINDS)
def test_corrupt_file_of_each_kind_is_named(name, tmp_path, straight):
    """A flipped bit in any file of the newest checkpoint: export is refused naming that file (rc 2)."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    target = run / "checkpoints" / "step_00000006" / name
    if name == "gptscale.json":
        meta = json.loads(target.read_text())
        target.write_text(json.dumps({**meta, "step": 7}))  # a plausible edit: still JSON, wrong content
    else:
        flip(target)
    p = gptscale("export", run, "--out", tmp_path / "hf", expect_ok=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert str(target) in p.stderr and "step_00000004" in p.stderr, p.stderr  # the file, and the way on
    assert not (tmp_path / "hf").exists()


def test_truncated_file_is_named(tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    target = run / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    p = gptscale("export", run, "--out", tmp_path / "hf", expect_ok=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and str(target) in p.stderr, p.stderr
    assert "truncated" in p.stderr


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"])
def test_resume_falls_back_over_a_corrupt_checkpoint(name, tmp_path, shard_dir, tok_dir, straight):
    """--resume auto with a flipped bit in the newest checkpoint: a warning naming the file, the corrupt one
    moved aside (kept), a resume from the previous one, and the same losses as the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in (run / "metrics.jsonl").read_text().splitlines()
                                               if json.loads(line).get("step", 0) <= 4))
    flip(run / "checkpoints" / "step_00000006" / name)
    out = launch(config(tmp_path, shard_dir, tok_dir))
    text = out.stdout + out.stderr
    assert f"checkpoint step_00000006 is corrupt ({run / 'checkpoints' / 'step_00000006' / name}" in text, text[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_00000004'}" in text
    assert (run / "checkpoints" / "step_00000006.corrupt" / name).is_file()
    assert_same_losses(run, straight)


def test_every_labelled_point_is_declared():
    assert checkpoint.KILL_POINTS and set(checkpoint.KILL_POINTS) <= set(faults.LABELS)
