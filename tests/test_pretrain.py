"""Pre-training with DeepSpeed on 2 real ranks (CPU, gloo) on real Gutenberg shards."""

import json
from pathlib import Path

import pytest

from helpers import REPO, base_config, fault_env, launch, losses


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory, shard_dir, tok_dir) -> dict[int, Path]:
    """The same run at ZeRO-0/1/2/3 with 2 ranks; ZeRO-2 is started with the deepspeed launcher as users do."""
    runs = {}
    for stage in (0, 1, 2, 3):
        tmp = tmp_path_factory.mktemp(f"zero{stage}")
        cfg = base_config(tmp, shard_dir, tok_dir, ds_config=str(REPO / "ds_configs" / f"zero{stage}.json"))
        launch(cfg, launcher="deepspeed" if stage == 2 else "torchrun")
        runs[stage] = tmp / "run"
    return runs


def test_zero_stages_give_the_same_losses(stage_runs):
    ref = losses(stage_runs[0])
    assert sorted(ref) == list(range(1, 9))
    assert ref[8] < ref[1]  # it learns
    for stage in (1, 2, 3):
        got = losses(stage_runs[stage])
        assert got.keys() == ref.keys()
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-6), (stage, step, got[step], ref[step])


def test_run_dir_layout_and_checkpoints(stage_runs):
    run = stage_runs[2]
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    ck = run / "checkpoints"
    assert (ck / "latest").read_text() == "step_00000008"
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_00000004", "step_00000008"]
    meta = json.loads((ck / "step_00000008" / "gptscale.json").read_text())
    assert meta["step"] == 8 and meta["world_size"] == 2 and meta["zero_stage"] == 2
    assert meta["tokens"] == 8 * 4 * 2 * 2 * 32
    assert {p.name for p in (ck / "step_00000008").glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}


def test_tensorboard_events_read_back(stage_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(stage_runs[2] / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "lr", "grad_norm", "tokens_per_sec", "tflops", "mfu", "memory_gb", "val/loss",
            "val/ppl"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    assert [e.step for e in acc.Scalars("val/loss")] == [4, 8]
    ref = losses(stage_runs[2])
    assert [round(e.value, 5) for e in acc.Scalars("train/loss")] == [round(ref[s], 5) for s in range(1, 9)]
    lrs = [e.value for e in acc.Scalars("lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-9)  # warm-up, then cosine to 0


@pytest.mark.parametrize("stage", [2, 3])
def test_exact_resume_after_sigkill(tmp_path, shard_dir, tok_dir, stage_runs, stage):
    """2N steps straight == N steps, SIGKILL of the whole process group, resume for N more: every loss equal."""
    cfg = base_config(tmp_path, shard_dir, tok_dir, ds_config=str(REPO / "ds_configs" / f"zero{stage}.json"))
    p = launch(cfg, env=fault_env(kill_after_checkpoint=4), expect_ok=False)
    assert p.returncode != 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text() == "step_00000004"
    assert max(losses(run)) == 4  # killed right after the checkpoint
    out = launch(cfg)  # --resume auto is the default
    assert "resumed from" in out.stdout
    straight, resumed = losses(stage_runs[stage]), losses(run)
    assert resumed.keys() == straight.keys()
    for step in straight:
        assert resumed[step] == straight[step], (step, resumed[step], straight[step])


def test_bf16_two_ranks(tmp_path, shard_dir, tok_dir):
    cfg = base_config(tmp_path, shard_dir, tok_dir, precision="bf16", max_steps=6, eval_interval=0,
                      checkpoint_interval=100)
    launch(cfg)
    got = losses(tmp_path / "run")
    assert sorted(got) == list(range(1, 7)) and all(x == x for x in got.values()) and got[6] < got[1]


@pytest.mark.slow
def test_cpu_offload_smoke_one_process(tmp_path, shard_dir, tok_dir):
    """ZeRO-3 with parameters and optimizer offloaded (DeepSpeedCPUAdam), one process."""
    cfg = base_config(tmp_path, shard_dir, tok_dir, ds_config=str(REPO / "ds_configs" / "zero3_offload_smoke.json"),
                      max_steps=4, eval_interval=0, checkpoint_interval=4)
    out = launch(cfg, nproc=1)
    got = losses(tmp_path / "run")
    assert sorted(got) == [1, 2, 3, 4] and got[4] < got[1]
    assert "ZeRO-3" in out.stdout
    assert "DeepSpeedCPUAdam" in out.stdout + out.stderr


def test_non_finite_loss_is_skipped_then_stops(tmp_path, shard_dir, tok_dir):
    cfg = base_config(tmp_path, shard_dir, tok_dir, max_steps=3, eval_interval=0, checkpoint_interval=100,
                      grad_accum_steps=1)
    launch(cfg, nproc=1, env=fault_env(nan_micro="2"))
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in recs] == [0, 1, 1] and all(r["loss"] == r["loss"] for r in recs)
    (tmp_path / "b").mkdir()
    cfg2 = base_config(tmp_path / "b", shard_dir, tok_dir, max_steps=5, eval_interval=0, checkpoint_interval=100,
                       grad_accum_steps=1, max_bad_steps=3)
    p = launch(cfg2, nproc=1, env=fault_env(nan_micro="2,3,4"), expect_ok=False)
    assert p.returncode != 0 and "3 non-finite losses in a row" in p.stderr


def test_bad_setups_fail_before_compute(tmp_path, shard_dir, tok_dir):
    cfg = base_config(tmp_path, shard_dir, tok_dir)
    p = launch(cfg, "--data.seq_len=64", nproc=1, expect_ok=False)
    assert p.returncode != 0 and "--data.seq_len=32" in p.stderr
    p = launch(cfg, "--model.vocab_size=1000", nproc=1, expect_ok=False)
    assert "--model.vocab_size=2000 or more" in p.stderr and "e.g. 2048" in p.stderr
    bad = tmp_path / "bad_ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}))
    p = launch(cfg, f"--train.ds_config={bad}", nproc=1, expect_ok=False)
    assert "offload_param needs stage 3" in p.stderr
    p = launch(cfg, "--train.global_batch_size=64", nproc=1, expect_ok=False)
    assert "train.global_batch_size=64" in p.stderr


@pytest.mark.parametrize("stage", [2, 3])
def test_elastic_resume_2_to_1_and_back(tmp_path, shard_dir, tok_dir, stage):
    """A checkpoint from 2 ranks continues on 1 rank (and one from 1 rank on 2) through DeepSpeed's universal
    checkpoint, with the same global batch: the same samples in the same order, so every step's loss
    matches a straight 2-rank run up to fp32 reduction-order noise, which Adam amplifies over steps
    (dropout off: its masks depend on the rank layout). A wrong batch or lost optimizer state moves the
    loss by ~1e-2; the stream position after the run shows no sample was repeated or skipped."""
    ds = str(REPO / "ds_configs" / f"zero{stage}.json")
    (tmp_path / "straight").mkdir()
    launch(base_config(tmp_path / "straight", shard_dir, tok_dir, ds_config=ds), "--model.dropout=0")
    straight = losses(tmp_path / "straight" / "run")
    accum = {2: "2", 1: "4"}  # 4 x accum x world = 16 sequences per step either way
    for name, first, second in (("2to1", 2, 1), ("1to2", 1, 2)):
        tmp = tmp_path / name
        tmp.mkdir()
        cfg = base_config(tmp, shard_dir, tok_dir, ds_config=ds)
        launch(cfg, "--model.dropout=0", f"--train.grad_accum_steps={accum[first]}", nproc=first,
               env=fault_env(kill_after_checkpoint=4), expect_ok=False)
        out = launch(cfg, "--model.dropout=0", f"--train.grad_accum_steps={accum[second]}", nproc=second)
        assert "elastic resume" in out.stdout, out.stdout[-2000:]
        got = losses(tmp / "run")
        assert got.keys() == straight.keys()
        for step in straight:
            assert got[step] == pytest.approx(straight[step], rel=1e-3), (name, step, got[step], straight[step])
        assert got[5] == pytest.approx(straight[5], rel=1e-5)  # first step after the switch: same weights, data
        assert (tmp / "run" / "checkpoints" / "step_00000004_universal").is_dir()
        from gptscale.runtime.safeload import safe_torch_load

        final = tmp / "run" / "checkpoints" / "step_00000008"
        state = safe_torch_load(sorted(final.glob("*mp_rank_00_model_states.pt"))[0])  # ZeRO-3: zero_pp_rank_0_...
        assert state["data"]["position"] == 8 * 16 and state["step"] == 8


def test_prune_keeps_the_newest_and_never_a_newer_one(tmp_path):
    from gptscale.runtime.checkpoint import prune

    ck = tmp_path / "checkpoints"
    for s in (4, 8, 12, 16, 20):
        (ck / f"step_{s:08d}").mkdir(parents=True)
    (ck / "step_00000004_universal").mkdir()
    (ck / "step_00000008.corrupt").mkdir()
    prune(ck, keep_last=2, current="step_00000016")
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == [
        "step_00000008.corrupt", "step_00000012", "step_00000016", "step_00000020"]


def test_export_trained_run_loads_in_transformers(stage_runs, tmp_path):
    """`gptscale export RUN --verify`: ZeRO-2 shards -> fp32 -> HF folder; AutoModelForCausalLM's logits
    and greedy tokens equal the checkpoint's model, and AutoTokenizer encodes like our tokenizer."""
    from conftest import run_cli
    from transformers import AutoTokenizer

    from gptscale.tokenizer import Tokenizer

    out = run_cli("export", str(stage_runs[2]), "--out", str(tmp_path / "hf"), "--verify")
    assert "-> OK" in out
    meta = json.loads((stage_runs[2] / "checkpoints" / "step_00000008" / "gptscale.json").read_text())
    text = "The quick brown fox, 1234 times; naïve café!"
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"] == Tokenizer.load(meta["tokenizer"]).encode(text)


def test_max_tokens_and_lr_schedule():
    from gptscale.config import load_config
    from gptscale.pretrain import total_steps
    from gptscale.runtime.engine import lr_multiplier

    cfg, _ = load_config(["--train.micro_batch_size=4", "--train.grad_accum_steps=2", "--data.seq_len=32",
                          "--train.max_steps=1000", "--train.max_tokens=10000"])
    assert total_steps(cfg, world=2) == 20  # 4 x 2 x 2 x 32 = 512 tokens per step: ceil(10000 / 512)
    assert [round(lr_multiplier(s, 4, 20, 0.1), 4) for s in (0, 3, 4, 12, 20, 30)] == [0.25, 1.0, 1.0, 0.55, 0.1, 0.1]


def test_preemption_signal_checkpoints_at_step_boundary_and_resumes_exactly(tmp_path, shard_dir, tok_dir, stage_runs):
    """A real SIGUSR2 on one rank (the last) after step 3: every rank agrees, checkpoint step 3 is written (not a
    checkpoint_interval step), the run exits 0 (outside Slurm nothing requeues); rerunning ends equal to straight."""
    cfg = base_config(tmp_path, shard_dir, tok_dir)
    p = launch(cfg, env=fault_env(preempt_at_step=3))
    run = tmp_path / "run"
    assert "caught SIGUSR2" in p.stderr
    assert "preempted at step 3" in p.stdout and "stopped by signal" in p.stdout
    assert (run / "checkpoints" / "latest").read_text() == "step_00000003"
    assert max(losses(run)) == 3
    out = launch(cfg)
    assert "resumed from" in out.stdout and "at step 3" in out.stdout
    straight, resumed = losses(stage_runs[2]), losses(run)
    assert resumed == straight


def test_compile_matches_eager(tmp_path, shard_dir, tok_dir):
    """train.compile=true (torch.compile before DeepSpeed) trains the same model: losses equal to eager's."""
    runs = {}
    for flag in ("false", "true"):
        d = tmp_path / flag
        d.mkdir()
        cfg = base_config(d, shard_dir, tok_dir, max_steps=3, eval_interval=0, checkpoint_interval=100,
                          grad_accum_steps=1)
        launch(cfg, f"--train.compile={flag}", "--model.dropout=0.0", nproc=1,
               env={"TORCHINDUCTOR_CACHE_DIR": str(d / "inductor")})
        runs[flag] = losses(d / "run")
    assert not any((tmp_path / "false" / "inductor").rglob("*.py"))  # (an empty folder may be made)
    assert any((tmp_path / "true" / "inductor").rglob("*.py"))  # inductor really generated kernels
    assert runs["true"].keys() == runs["false"].keys() == {1, 2, 3}
    for step in runs["false"]:
        assert runs["true"][step] == pytest.approx(runs["false"][step], rel=1e-4), step
