"""The `gptscale` console script, run as a user runs it (a real subprocess)."""

import shutil
import subprocess
import sys

import pytest

GPTSCALE = [shutil.which("gptscale")] if shutil.which("gptscale") else [sys.executable, "-m", "gptscale"]


def run(*args, check=True):
    p = subprocess.run([*GPTSCALE, *args], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p


def test_typo_names_the_key():
    p = run("config", "--model.n_layr=4", check=False)
    assert p.returncode == 2
    assert "n_layr" in p.stderr and "model.n_layer" in p.stderr


def test_config_prints_resolved_yaml(tmp_path):
    import yaml

    f = tmp_path / "run.yaml"
    f.write_text("model:\n  preset: gpt2-350m\ntrain:\n  lr: 1.0e-4\n")
    out = yaml.safe_load(run("config", "--config", str(f), "--train.lr=6e-4").stdout)
    assert out["model"]["d_model"] == 1024 and out["train"]["lr"] == 6e-4


def test_config_keys_lists_docs():
    out = run("config", "--keys").stdout
    assert "model.ln_position: 'post': LayerNorm after each residual add" in out


def test_presets_table():
    out = run("presets").stdout
    line = next(x for x in out.splitlines() if x.startswith("gpt2-124m"))
    assert "124.4M" in line


def test_unknown_command():
    p = run("pretrian", check=False)
    assert p.returncode == 2 and "unknown command" in p.stderr


@pytest.mark.parametrize("preset", ["gpt1-tiny", "gpt2-tiny"])
def test_hf_check(tmp_path, preset):
    p = run("hf-check", f"--model.preset={preset}", "--out", str(tmp_path / "hf"))
    assert "greedy tokens equal: True" in p.stdout
    assert (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.parametrize("cmd", [["pretrain"], ["finetune", "--task", "rte"]])
def test_out_of_range_values_stop_both_loops_before_any_compute(cmd, tmp_path):
    p = run(*cmd, "--train.log_interval=0", f"--train.run_dir={tmp_path / 'run'}", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"gptscale {cmd[0]}: error: flag --train.log_interval: train.log_interval=0 is out of range" in p.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_hf_check_replaces_its_own_output_but_never_a_users_folder(tmp_path):
    """Issue 13 item 3: `gptscale hf-check --out DIR` deleted whatever DIR held (a run folder, checkpoints)."""
    out = tmp_path / "hf"
    run("hf-check", "--model.preset=gpt2-tiny", "--out", str(out))
    run("hf-check", "--model.preset=gpt2-tiny", "--out", str(out))  # its own folder: replaced
    user = tmp_path / "run"
    (user / "checkpoints").mkdir(parents=True)
    (user / "checkpoints" / "latest").write_text("step_00000100")
    p = run("hf-check", "--model.preset=gpt2-tiny", "--out", str(user), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "is never replaced" in p.stderr
    assert (user / "checkpoints" / "latest").read_text() == "step_00000100"


@pytest.mark.slow
def test_pretrain_and_finetune_run_from_a_directory_outside_the_checkout(tmp_path, shard_dir, tok_dir, data_dir):
    """As after `pip install`: the working directory is not the checkout, run folders are relative to it, and
    the DeepSpeed configs are found by name (the default, and `--train.ds_config=zero2`) as package data."""
    from helpers import REPO, child_env

    work = tmp_path / "elsewhere"
    work.mkdir()
    assert REPO not in work.parents
    common = ["--model.preset=gpt2-tiny", "--model.n_ctx=64", "--train.precision=fp32"]
    pre = [sys.executable, "-m", "gptscale", "pretrain", f"--data.shards={shard_dir}", f"--data.tokenizer={tok_dir}",
           "--data.seq_len=32", "--train.run_dir=runs/pre", "--train.max_steps=2", "--train.micro_batch_size=4",
           "--train.warmup_steps=1", "--train.checkpoint_interval=2", "--train.eval_interval=2",
           "--train.eval_steps=1", "--train.peak_tflops=1", "--model.vocab_size=2000", *common]
    ft = [sys.executable, "-m", "gptscale", "finetune", "--task", "sst2", "--init", "runs/pre", "--data-dir",
          str(data_dir), "--train.run_dir=runs/sst2", "--train.ds_config=zero2", "--finetune.train_samples=32",
          "--finetune.eval_samples=16", "--finetune.epochs=1", "--finetune.batch_size=8",
          "--finetune.micro_batch_size=8", *common]
    for cmd in (pre, ft):
        p = subprocess.run(cmd, cwd=work, env=child_env(), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (work / "runs" / "pre" / "checkpoints" / "step_00000002" / "gptscale.json").is_file()
    assert (work / "runs" / "sst2" / "metrics.json").is_file() and (work / "runs" / "sst2" / "model" / "config.json").is_file()


def test_output_into_a_closed_pipe_is_no_traceback():
    """`gptscale presets | head -1`: the reader leaves early; gptscale stops quietly."""
    cmd = " ".join(GPTSCALE) + " presets | head -1"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert p.stdout.count("\n") == 1 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr
