"""ds_configs keys checked against what the installed DeepSpeed knows (gptscale.runtime.ds_keys): a misspelt key
is an error naming the file, the key and the nearest valid key, before any process group or compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gptscale.runtime import ds_keys
from gptscale.runtime.engine import DSConfigError, load_ds_config
from helpers import REPO, base_config, launch

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
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2.json").write_text('{"zero_optimization": {"stage": 1}}')
    assert load_ds_config("ds_configs/zero2.json")["zero_optimization"]["stage"] == 1  # the user's own file wins
    with pytest.raises(DSConfigError, match="no such file; shipped with gptscale: ds_configs/zero0.json"):
        load_ds_config("ds_configs/zero9.json")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "whl"), str(REPO)], check=True, capture_output=True)
    names = zipfile.ZipFile(next((tmp_path / "whl").glob("*.whl"))).namelist()
    assert {f"gptscale/ds_configs/{p.name}" for p in (REPO / "ds_configs").glob("*.json")} <= set(names)
