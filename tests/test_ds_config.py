"""ds_configs keys checked against what the installed DeepSpeed knows (gptscale.runtime.ds_keys): a misspelt key
is an error naming the file, the key and the nearest valid key, before any process group or compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gptscale.runtime import ds_keys
from gptscale.runtime.engine import DSConfigError, load_ds_config
from helpers import REPO, base_config, launch, losses

SHIPPED = sorted((REPO / "ds_configs").glob("*.json"))


def _write(tmp_path: Path, cfg: dict) -> Path:
    f = tmp_path / "ds.json"
    f.write_text(json.dumps(cfg))
    return f


def test_misspelt_top_level_key_names_the_file_key_and_nearest_key(tmp_path):
    f = _write(tmp_path, {"_doc": "documentation keys are skipped", "zero_optimisation": {"stage": 3}})
    with pytest.raises(DSConfigError) as e:
        load_ds_config(f)
    assert str(e.value) == f"{f}: unknown DeepSpeed key 'zero_optimisation' (did you mean 'zero_optimization'?)"


@pytest.mark.parametrize("block, key, near", [
    ({"stage": 2, "overlap_com": True}, "zero_optimization.overlap_com", "zero_optimization.overlap_comm"),
    ({"stage": 3, "stage3_prefetch_bucket": 5}, "zero_optimization.stage3_prefetch_bucket",
     "zero_optimization.stage3_prefetch_bucket_size"),  # an alias of prefetch_bucket_size
    ({"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memroy": True}},
     "zero_optimization.offload_optimizer.pin_memroy", "zero_optimization.offload_optimizer.pin_memory"),
])
def test_misspelt_nested_key_is_refused(tmp_path, block, key, near):
    f = _write(tmp_path, {"zero_optimization": block})
    with pytest.raises(DSConfigError, match=f"^{f}: unknown DeepSpeed key '{key}' \\(did you mean '{near}'\\?\\)$"):
        load_ds_config(f)


def test_a_key_in_the_wrong_block_points_to_where_it_belongs():
    msg = ds_keys.unknown_key_message({"zero_optimization": {"stage": 3}, "overlap_comm": True}, "x.json")
    assert msg == "x.json: unknown DeepSpeed key 'overlap_comm' (did you mean 'zero_optimization.overlap_comm'?)"
    msg = ds_keys.unknown_key_message({"zero_optimization": {"stage": 3, "pin_memory": True}}, "x.json")
    assert msg == ("x.json: unknown DeepSpeed key 'zero_optimization.pin_memory' (did you mean "
                   "'zero_optimization.offload_optimizer.pin_memory' or 'zero_optimization.offload_param.pin_memory'?)")


def test_blocks_deepspeed_reads_without_checking_are_checked_too():
    """activation_checkpointing and flops_profiler are read key by key: DeepSpeed ignores a typo there."""
    msg = ds_keys.unknown_key_message({"activation_checkpointing": {"partition_activation": True}}, "x.json")
    assert msg == ("x.json: unknown DeepSpeed key 'activation_checkpointing.partition_activation' (did you mean "
                   "'activation_checkpointing.partition_activations'?)")
    msg = ds_keys.unknown_key_message({"flops_profiler": {"enabled": True, "frobnicate": 1}}, "x.json")
    assert msg.startswith("x.json: unknown DeepSpeed key 'flops_profiler.frobnicate' (not a key DeepSpeed ")
    assert "reads in flops_profiler: remove it" in msg


def test_a_key_deepspeed_removed_gets_deepspeeds_message():
    msg = ds_keys.unknown_key_message({"amp": {"enabled": True}}, "x.json")
    assert msg.startswith("x.json: DeepSpeed key 'amp' was removed from DeepSpeed: ") and "bf16" in msg


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_ds_config_passes(path):
    cfg = load_ds_config(path)
    assert "zero_optimization" in cfg and ds_keys.unknown_key_message(cfg, path.name) is None


def test_hf_trainer_style_config_has_only_known_keys():
    """Keys DeepSpeed knows pass the key check even where gptscale fills them (RUN_CONFIG_KEYS is separate)."""
    hf = {"fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16},
          "bf16": {"enabled": "auto"},
          "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "weight_decay": "auto"}},
          "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}},
          "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True},
                                "overlap_comm": True, "sub_group_size": 1e9, "reduce_bucket_size": "auto",
                                "stage3_gather_16bit_weights_on_model_save": True},
          "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
          "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": False,
          "tensorboard": {"enabled": True, "output_path": "tb/"}, "activation_checkpointing": {"profile": False},
          "comms_logger": {"enabled": False}, "data_types": {"grad_accum_dtype": "fp32"}}
    assert ds_keys.unknown_key_message(hf, "hf.json") is None


def test_the_key_set_is_deepspeeds_own():
    """Every field of DeepSpeed's ZeRO model (by name and alias) is known; a key DeepSpeed's own pydantic model
    refuses is refused here too; every top-level key is one DeepSpeedConfig reads."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.offload_config import DeepSpeedZeroOffloadOptimizerConfig

    tree = ds_keys.schema()
    zero = tree["zero_optimization"]
    for name, field in DeepSpeedZeroConfig.model_fields.items():
        assert name in zero and (field.alias is None or field.alias in zero)
    assert set(zero["offload_optimizer"]) == set(DeepSpeedZeroOffloadOptimizerConfig.model_fields)
    with pytest.raises(ValidationError, match="overlap_com"):
        DeepSpeedZeroConfig(overlap_com=True)
    assert ds_keys.unknown_key_message({"zero_optimization": {"overlap_com": True}}, "x") is not None
    assert set(tree) - set(ds_keys.READ_BY_INITIALIZE) == ds_keys._reads()
    assert {"zero_optimization", "bf16", "fp16", "optimizer", "scheduler", "gradient_clipping", "tensorboard",
            "wandb", "csv_monitor", "flops_profiler", "activation_checkpointing", "comms_logger"} <= set(tree)
    assert 250 < ds_keys.size() < 1000 and len(tree) > 40


def test_pretrain_refuses_a_misspelt_key_before_starting(tmp_path, shard_dir, tok_dir):
    """A real `gptscale pretrain`: exit status 2, the one-line message, no traceback, no run folder."""
    bad = _write(tmp_path, {"zero_optimisation": {"stage": 2}})
    cfg = base_config(tmp_path, shard_dir, tok_dir)
    p = launch(cfg, f"--train.ds_config={bad}", nproc=1, expect_ok=False, timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-4000:]
    assert (f"gptscale pretrain: error: {bad}: unknown DeepSpeed key 'zero_optimisation' (did you mean "
            f"'zero_optimization'?)") in p.stderr.splitlines()
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()


def test_shipped_configs_resolve_from_any_directory_and_install_as_package_data(tmp_path, monkeypatch):
    """The default train.ds_config (ds_configs/zero2.json) is found from any working directory, and a built
    wheel carries the files (so `pip install` users get them too)."""
    import subprocess
    import sys
    import zipfile

    from gptscale.runtime.engine import ds_config_path

    monkeypatch.chdir(tmp_path)
    assert ds_config_path("ds_configs/zero2.json").read_bytes() == (REPO / "ds_configs" / "zero2.json").read_bytes()
    assert load_ds_config("zero3.json")["zero_optimization"]["stage"] == 3
    assert load_ds_config("zero3_offload_smoke")["zero_optimization"]["offload_param"]["device"] == "cpu"
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2.json").write_text('{"zero_optimization": {"stage": 1}}')
    assert load_ds_config("ds_configs/zero2.json")["zero_optimization"]["stage"] == 1  # the user's own file wins
    with pytest.raises(DSConfigError, match="no such file; shipped with gptscale .by name.: zero0, zero1"):
        load_ds_config("ds_configs/zero9.json")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "whl"), str(REPO)], check=True, capture_output=True)
    names = zipfile.ZipFile(next((tmp_path / "whl").glob("*.whl"))).namelist()
    assert {f"gptscale/ds_configs/{p.name}" for p in (REPO / "ds_configs").glob("*.json")} <= set(names)


# ------------------------------------------------------------------ a user's own (HF Trainer style) DeepSpeed JSON

HF_STYLE = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16}, "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                      "warmup_num_steps": "auto", "total_num_steps": "auto"}},
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True,
                          "reduce_bucket_size": "auto", "allgather_bucket_size": 5e8},
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": False}
"""The issue's HF Trainer config, with ds_configs/zero2.json's ZeRO settings (reduce_bucket_size left "auto")."""


def _train(*flags: str):
    from gptscale.config import load_config

    return load_config(list(flags))[0].train


def test_hf_style_config_trains_exactly_like_the_shipped_one(tmp_path, shard_dir, tok_dir):
    """A real `gptscale pretrain` with the HF-style file (given as `--deepspeed_config FILE --deepspeed`, DeepSpeed's
    flags) against the same run on ds_configs/zero2.json: the same loss and lr at every step."""
    hf = _write(tmp_path, HF_STYLE)
    cfg = base_config(tmp_path, shard_dir, tok_dir, lr_schedule="linear", eval_interval=0, max_steps=6)
    launch(cfg, f"--train.run_dir={tmp_path / 'shipped'}", nproc=1)
    launch(cfg, f"--train.run_dir={tmp_path / 'hf'}", "--deepspeed_config", str(hf), "--deepspeed", nproc=1)
    shipped, own = (losses(tmp_path / d) for d in ("shipped", "hf"))
    assert sorted(own) == list(range(1, 7)) and own == shipped
    lrs = [[json.loads(r).get("lr") for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
           for d in ("shipped", "hf")]
    assert lrs[0] == lrs[1] and any(lr for lr in lrs[0])
    resolved = (tmp_path / "hf" / "config.yaml").read_text()
    assert f"ds_config: {hf}" in resolved


def test_auto_is_filled_and_agreeing_values_pass(tmp_path):
    """HF Trainer's fills (batch sizes, accumulation, clipping, precision; ZeRO-3 buckets from d_model = 64:
    d*d, 0.9*d*d, 10*d); explicit values equal to the run config's pass; the optimizer and scheduler blocks are
    checked, then dropped (gptscale builds both); the file's own fp16 settings are kept."""
    from gptscale.runtime.engine import build_ds_config

    train = _train("--train.micro_batch_size=4", "--train.grad_accum_steps=3", "--train.grad_clip=0.5",
                   "--train.precision=fp16", "--train.lr=6e-4", "--train.min_lr=6e-5", "--train.warmup_steps=10",
                   f"--train.ds_config={tmp_path / 'ds.json'}")
    own = {**HF_STYLE, "gradient_clipping": 0.5, "train_micro_batch_size_per_gpu": 4, "train_batch_size": 24,
           "fp16": {"enabled": True, "loss_scale_window": 500}, "bf16": {"enabled": False},
           "optimizer": {"type": "Adam", "params": {"lr": 6e-4, "betas": [0.9, 0.999], "eps": 1e-8,
                                                    "weight_decay": "auto", "adam_w_mode": True, "torch_adam": True}},
           "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_min_ratio": 0, "warmup_num_steps": 10,
                                                              "cos_min_ratio": 0.1, "total_num_steps": 100,
                                                              "warmup_type": "linear"}},
           "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                 "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9}}
    ds = load_ds_config(_write(tmp_path, own), train, world_size=2, total_steps=100)
    out = build_ds_config(ds, train, world_size=2, d_model=64)
    assert out["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 4096, "stage3_prefetch_bucket_size": 3686,
                                        "stage3_param_persistence_threshold": 640, "stage3_max_live_parameters": 1e9}
    assert (out["train_batch_size"], out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"],
            out["gradient_clipping"]) == (24, 4, 3, 0.5)
    assert out["fp16"]["enabled"] and out["fp16"]["loss_scale_window"] == 500 and not out["bf16"]["enabled"]
    assert "optimizer" not in out and "scheduler" not in out and out["steps_per_print"] == 2000


def test_every_conflict_is_listed_in_one_error_with_both_values_and_the_fix(tmp_path):
    bad = {**HF_STYLE, "gradient_clipping": 0.5, "fp16": {"enabled": True}, "zero_optimisation": {},
           "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": "auto"}},
           "scheduler": {"type": "OneCycle", "params": {}},
           "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}, "reduce_bucket_size": "auto"}}
    f = _write(tmp_path, bad)
    with pytest.raises(DSConfigError) as e:
        load_ds_config(f, _train("--train.lr=6e-4", "--train.precision=bf16"))
    assert str(e.value).splitlines() == [
        f"{f}: 6 settings cannot be used as written:",
        "  - unknown DeepSpeed key 'zero_optimisation' (did you mean 'zero_optimization'?)",
        "  - zero_optimization.offload_param needs stage 3 (DeepSpeed ignores it at stage 2 without a word); set "
        "\"stage\": 3 or remove offload_param",
        "  - scheduler.type=\"OneCycle\": gptscale runs its own schedule (linear warm-up from 0, then cosine or "
        "linear decay to train.min_lr), which only WarmupLR, WarmupDecayLR, WarmupCosineLR describe; use one of "
        "them or remove the scheduler block",
        "  - gradient_clipping=0.5 but train.grad_clip=1.0: set it to \"auto\", remove it, or pass "
        "--train.grad_clip=0.5 (gptscale finetune: --finetune.grad_clip=0.5)",
        "  - fp16.enabled=true but train.precision=\"bf16\": set it to \"auto\", remove it, or pass "
        "--train.precision=fp16",
        "  - optimizer.params.lr=0.0003 but train.lr=0.0006: set it to \"auto\", remove it, or pass --train.lr=0.0003 "
        "(gptscale finetune: --finetune.lr=0.0003)"]
    fixed = {**HF_STYLE, "optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}}  # the fixes the message names
    ok = _write(tmp_path, fixed)
    assert load_ds_config(ok, _train("--train.lr=3e-4", "--train.lr_schedule=linear")) == fixed


@pytest.mark.parametrize("kind, params, flags, problem", [
    ("WarmupDecayLR", {}, ["--train.lr_schedule=linear"], None),
    ("WarmupCosineLR", {"cos_min_ratio": 0.5}, ["--train.min_lr=1e-4", "--train.lr=2e-4"], None),
    ("WarmupLR", {"warmup_max_lr": 2e-4}, ["--train.min_lr=2e-4", "--train.lr=2e-4"], None),
    ("WarmupDecayLR", {}, [], 'cosine decay (gptscale finetune: always linear decay to 0): pass --train.lr_schedule='
                              'linear, set "type": "WarmupCosineLR", or remove the scheduler block'),
    ("WarmupDecayLR", {}, ["--train.lr_schedule=linear", "--train.min_lr=1e-5"],
     "is linear decay to train.min_lr (gptscale finetune: always linear decay to 0): pass --train.lr_schedule=linear "
     "--train.min_lr=0, or remove the scheduler block"),
    ("WarmupLR", {}, [], "pass --train.min_lr=0.00025, set \"type\": \"WarmupCosineLR\", or remove"),
    ("WarmupCosineLR", {"cos_min_ratio": 0.1}, [], "scheduler.params.cos_min_ratio=0.1 but train.min_lr / "
                                                   "train.lr=0.0: set it to \"auto\", remove it, or pass "
                                                   "--train.min_lr=2.5e-05"),
    ("WarmupCosineLR", {"warmup_type": "log"}, [], "warmup_type=\"log\": gptscale warms up linearly"),
    ("WarmupCosineLR", {"warmup_max_lr": 1e-3}, [], "scheduler.params.warmup_max_lr: not a WarmupCosineLR parameter"),
])
def test_a_scheduler_block_must_describe_the_schedule_gptscale_runs(tmp_path, kind, params, flags, problem):
    f = _write(tmp_path, {"scheduler": {"type": kind, "params": params}})
    if problem is None:
        load_ds_config(f, _train(*flags), total_steps=100)
    else:
        with pytest.raises(DSConfigError) as e:
            load_ds_config(f, _train(*flags), total_steps=100)
        assert str(e.value).startswith(f"{f}: scheduler.") and problem in str(e.value), str(e.value)


def test_fine_tuning_takes_the_hf_style_config_as_it_is(tmp_path):
    """gptscale finetune's recipe (linear decay to 0, batch from finetune.*) is what WarmupDecayLR describes."""
    from gptscale.config import load_config
    from gptscale.finetune import recipe

    cfg = load_config(["--finetune.batch_size=16", "--finetune.micro_batch_size=4"])[0]
    train = recipe(cfg, world=2, steps=50)
    assert load_ds_config(_write(tmp_path, HF_STYLE), train, world_size=2, total_steps=50) == HF_STYLE


def test_pretrain_lists_every_conflict_and_exits_2(tmp_path, shard_dir, tok_dir):
    """A real `gptscale pretrain` on a file whose values conflict with the run config: exit 2, every key, no
    traceback."""
    bad = _write(tmp_path, {**HF_STYLE, "gradient_clipping": 0.5, "optimizer": {"type": "AdamW", "params": {
        "lr": 3e-4}}, "train_micro_batch_size_per_gpu": 2})
    cfg = base_config(tmp_path, shard_dir, tok_dir, lr_schedule="linear")
    p = launch(cfg, f"--deepspeed_config={bad}", nproc=1, expect_ok=False, timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-4000:]
    lines = p.stderr.splitlines()
    at = lines.index(f"gptscale pretrain: error: {bad}: 3 settings cannot be used as written:")
    assert [ln.split(":")[0] for ln in lines[at + 1:at + 4]] == [
        "  - train_micro_batch_size_per_gpu=2 but train.micro_batch_size=4",
        "  - gradient_clipping=0.5 but train.grad_clip=1.0", "  - optimizer.params.lr=0.0003 but train.lr=0.001"]
    assert "Traceback" not in p.stderr
