"""Resuming a 2-rank pre-training run as a careless user might: `latest` lost or stale, an older checkpoint
named, settings changed. Each either resumes right (the newest complete checkpoint, changes applied and
recorded) or stops with rc 2 and a message naming the key or checkpoint; no checkpoint is overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from gptscale.runtime import checkpoint
from gptscale.runtime.engine import lr_multiplier
from helpers import REPO, base_config, fault_env, gptscale, launch, losses, run_cli

pytestmark = pytest.mark.slow


def config(tmp: Path, shard_dir: Path, tok_dir: Path, **train) -> Path:
    return base_config(tmp, shard_dir, tok_dir, **{"max_steps": 6, "checkpoint_interval": 2, "keep_last": 2,
                                                   "eval_interval": 0, **train})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, shard_dir, tok_dir) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    launch(config(tmp, shard_dir, tok_dir))
    return tmp / "run"


@pytest.fixture
def run(tmp_path, straight) -> Path:
    """A copy of the finished 6-step run (checkpoints step 4 and 6) to resume."""
    shutil.copytree(straight, tmp_path / "run")
    return tmp_path / "run"


def tags(run: Path) -> list[str]:
    return checkpoint.complete_tags(run / "checkpoints")


@pytest.mark.parametrize("latest", ["missing", "empty", "older"])
def test_resume_auto_takes_the_newest_complete_checkpoint_whatever_latest_says(latest, run, shard_dir, tok_dir):
    f = run / "checkpoints" / "latest"
    {"missing": f.unlink, "empty": lambda: f.write_text(""), "older": lambda: f.write_text("step_00000004")}[latest]()
    out = launch(config(run.parent, shard_dir, tok_dir, max_steps=8))
    assert "resuming from the newest complete checkpoint, step_00000006" in out.stdout
    assert f"resumed from {run / 'checkpoints' / 'step_00000006'} at step 6" in out.stdout
    assert max(losses(run)) == 8 and tags(run) == ["step_00000006", "step_00000008"]  # step_4 pruned, nothing newer


def test_stepping_back_over_newer_checkpoints_needs_the_flag(run, shard_dir, tok_dir, straight):
    cfg, older = config(run.parent, shard_dir, tok_dir), run / "checkpoints" / "step_00000004"
    for args in (["--resume", str(older)], ["--resume", "none"]):
        p = launch(cfg, *args, nproc=1, expect_ok=False)  # one process: torchrun adds its own traceback
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
        assert "step_00000006" in p.stderr and "--train.allow_step_back=true" in p.stderr
    assert tags(run) == ["step_00000004", "step_00000006"]  # untouched
    (run / "metrics.jsonl").unlink()
    out = launch(cfg, "--resume", str(older), "--train.allow_step_back=true")
    assert (run / "checkpoints" / "stepped_back" / "step_00000006" / "gptscale.json").is_file()  # kept
    assert "moved step_00000006" in out.stdout
    ref = losses(straight)
    assert losses(run) == {s: ref[s] for s in (5, 6)}


def test_changed_lr_takes_effect_and_config_yaml_records_it(run, shard_dir, tok_dir):
    launch(config(run.parent, shard_dir, tok_dir, max_steps=8), "--train.lr=5e-4")
    lrs = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "lr" in rec:
            lrs[rec["step"]] = rec["lr"]
    for s in (7, 8):  # the new peak under the (new) 8-step schedule, from the resumed step on
        assert lrs[s] == pytest.approx(5e-4 * lr_multiplier(s, 2, 8, 0.0, "cosine"), rel=1e-6), (s, lrs[s])
    text = (run / "config.yaml").read_text()
    assert yaml.safe_load(text)["train"]["lr"] == 5e-4
    assert "# resume 1: step 6 from" in text and "train.lr 0.001 -> 0.0005" in text
    meta = json.loads((run / "checkpoints" / "step_00000008" / "gptscale.json").read_text())
    assert meta["resumes"][0]["changed"]["train.lr"] == [0.001, 0.0005]


@pytest.mark.parametrize("override,key", [("--data.seed=99", "data.seed"), ("--model.n_layer=3", "model.n_layer"),
                                          ("--train.ds_config=" + str(REPO / "ds_configs" / "zero1.json"), "ZeRO-1")])
def test_a_change_that_cannot_take_effect_is_an_error(override, key, run, shard_dir, tok_dir):
    p = launch(config(run.parent, shard_dir, tok_dir, max_steps=8), override, nproc=1, expect_ok=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert key in p.stderr and "step_00000006" in p.stderr, p.stderr[-2000:]
    assert tags(run) == ["step_00000004", "step_00000006"]


def test_a_non_finite_weight_is_never_saved(tmp_path, shard_dir, tok_dir):
    p = launch(config(tmp_path, shard_dir, tok_dir), env=fault_env(poison_weights_at_step=4), launcher="deepspeed",
               expect_ok=False)  # 2 ranks: rank 1's weights are fine, rank 0's not; both must refuse
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "checkpoint step_00000004 not written: weight 'wte.weight' holds 1 inf/NaN values" in p.stderr
    assert tags(tmp_path / "run") == ["step_00000002"]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000002"


@pytest.fixture(scope="module")
def other_tok(tmp_path_factory, shakespeare) -> Path:
    """A tokenizer of the same size as the session's, trained on other text."""
    out = tmp_path_factory.mktemp("tok") / "other"
    run_cli("tokenizer", "train", "--input", str(shakespeare), "--vocab-size", "2000", "--out", str(out))
    return out


def test_tokenizer_hash_travels_and_is_compared(straight, tok_dir, other_tok, tmp_path, data_dir):
    from gptscale.tokenizer import Tokenizer

    meta = checkpoint.read_meta(straight / "checkpoints", "step_00000006")
    assert meta["tokenizer_hash"] == Tokenizer.load(tok_dir).hash
    assert Tokenizer.load(other_tok).vocab_size == Tokenizer.load(tok_dir).vocab_size
    p = gptscale("export", straight, "--out", tmp_path / "bad", "--tokenizer", other_tok, expect_ok=False)
    assert p.returncode == 2 and "is not the one this checkpoint was trained with" in p.stderr, p.stderr
    gptscale("export", straight, "--out", tmp_path / "hf")
    recorded = json.loads((tmp_path / "hf" / "config.json").read_text())["gptscale"]
    assert recorded["tokenizer_hash"] == meta["tokenizer_hash"]
    assert recorded["export_tokenizer_hash"] == Tokenizer.load(tmp_path / "hf").hash
    for init in (straight, tmp_path / "hf"):
        p = gptscale("finetune", "--task", "rte", "--data-dir", data_dir, "--init", init, f"--data.tokenizer={other_tok}",
                     f"--train.run_dir={tmp_path / 'ft'}", expect_ok=False)
        assert p.returncode == 2 and "is not the one" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
