"""Config: precedence, presets, and errors that name the key and its nearest valid spelling."""

import json
import re

import pytest
import torch

from gptscale.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    RunConfig,
    field_docs,
    from_dict,
    load_config,
    model_config,
    to_dict,
)
from gptscale.model import GPT


def test_defaults_file_cli_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  preset: gpt2-124m\n  n_layer: 6\ntrain:\n  lr: 1e-4\n  max_steps: 50\n")
    cfg, rest = load_config(["--config", str(f), "--train.lr=3e-4", "--model.dropout", "0.0", "--local_rank=1"])
    assert rest == ["--local_rank=1"]  # non-dotted flags are left for the entry point
    assert cfg.model.preset == "gpt2-124m"
    assert cfg.model.n_layer == 6  # file beats preset
    assert cfg.model.d_model == 768 and cfg.model.ln_position == "pre"  # preset beats defaults
    assert cfg.model.dropout == 0.0  # CLI beats preset
    assert cfg.train.lr == 3e-4  # CLI beats file
    assert cfg.train.max_steps == 50  # file beats default
    assert cfg.train.beta1 == 0.9  # default


def test_json_file_and_yaml_exponent_strings(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"train": {"lr": "2.5e-4", "max_tokens": "1e9"}}))
    cfg, _ = load_config(["--config=" + str(f)])
    assert cfg.train.lr == 2.5e-4 and cfg.train.max_tokens == 10**9


@pytest.mark.parametrize(
    "argv, must_name",
    [
        (["--model.n_layr=4"], "model.n_layer"),
        (["--modle.n_layer=4"], "model"),
        (["--train.learning_rate=1e-3"], "train.lr"),
        (["--model.preset=gpt2-125m"], "gpt2-124m"),
        (["--model.ln_position=pos"], "'post'"),
        (["--model.n_layer=four"], "model.n_layer"),
        (["--model.tie_embeddings=maybe"], "true or false"),
        (["--model.d_model=100", "--model.n_head=12"], "model.n_head"),
    ],
)
def test_cli_errors_name_the_fix(argv, must_name):
    with pytest.raises(ConfigError) as e:
        load_config(argv)
    assert must_name in str(e.value)


def test_file_typo_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  d_modle: 512\n")
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(f)])
    assert str(f) in str(e.value) and "model.d_model" in str(e.value)


def test_every_field_has_a_docstring():
    for cls in (RunConfig, *(type(getattr(RunConfig(), s)) for s in ("model", "data", "train", "finetune"))):
        names = [f for f in cls.__dataclass_fields__]
        docs = field_docs(cls)
        assert set(names) == set(docs), f"{cls.__name__}: undocumented {set(names) - set(docs)}"


def test_gpt1_preset_is_the_paper():
    c = model_config("gpt1")
    assert (c.n_layer, c.d_model, c.n_head, c.d_ff, c.n_ctx, c.vocab_size) == (12, 768, 12, 3072, 512, 40478)
    assert c.ln_position == "post" and c.activation == "gelu_tanh" and c.dropout == 0.1
    assert c.tie_embeddings and c.init_std == 0.02


# Published parameter counts: GPT-2 (HF GPT2LMHeadModel.num_parameters()) and GPT-3 Table 2.1 (rounded).
@pytest.mark.parametrize("preset, expected, rel", [
    ("gpt2-124m", 124_439_808, 0), ("gpt2-350m", 354_823_168, 0), ("gpt2-774m", 774_030_080, 0),
    ("gpt2-1.5b", 1_557_611_200, 0), ("1.3b", 1.3e9, 0.02), ("2.7b", 2.7e9, 0.02), ("6.7b", 6.7e9, 0.02),
    ("13b", 13.0e9, 0.02),
])
def test_preset_sizes(preset, expected, rel):
    with torch.device("meta"):
        n = GPT(model_config(preset)).num_params()
    assert abs(n - expected) <= rel * expected, (preset, n)


def test_all_presets_build_and_roundtrip_through_dict():
    for name in PRESETS:
        c = model_config(name)
        assert from_dict(ModelConfig, to_dict(c)) == c


@pytest.mark.parametrize("flag,message", [
    ("--train.max_steps=-5", "train.max_steps=-5 is out of range: it must be >= 1"),  # "succeeded" training nothing
    ("--train.eval_steps=0", "train.eval_steps=0 is out of range"),                   # logged val loss nan
    ("--train.checkpoint_interval=0", "train.checkpoint_interval=0 is out of range"),  # ZeroDivisionError at step 1
    ("--train.log_interval=0", "train.log_interval=0 is out of range"),                # ZeroDivisionError at step 1
    ("--train.lr=-1", "train.lr=-1.0 is out of range: it must be > 0"),
    ("--train.micro_batch_size=0", "train.micro_batch_size=0 is out of range"),
    ("--train.beta2=1", "train.beta2=1.0 is out of range: it must be >= 0 and < 1"),
    ("--finetune.epochs=0", "finetune.epochs=0 is out of range"),
    ("--finetune.warmup_fraction=1.5", "finetune.warmup_fraction=1.5 is out of range"),
    ("--data.seq_len=0", "data.seq_len=0 is out of range"),
    ("--model.dropout=1", "model.dropout=1.0 is out of range"),
])
def test_values_are_range_checked_where_they_are_read(flag, message):
    with pytest.raises(ConfigError, match=f"^flag {flag.split('=')[0]}: {re.escape(message)}"):
        load_config([flag])


def test_range_errors_name_the_file_and_leave_unset_optionals_alone(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  keep_last: 0\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(f))}: train.keep_last=0 is out of range"):
        load_config(["--config", str(f)])
    cfg, _ = load_config(["--train.eval_interval=0", "--train.max_tokens=none", "--train.min_lr=2.5e-4"])
    assert cfg.train.eval_interval == 0 and cfg.train.max_tokens is None  # 0 disables evaluation; None is unset
    with pytest.raises(ConfigError, match="train.min_lr=0.001 is above train.lr=0.00025"):
        load_config(["--train.min_lr=1e-3"])


def test_deepspeeds_own_flags_name_the_ds_config():
    """--deepspeed_config FILE (DeepSpeed's flag; HF Trainer's --deepspeed FILE) is --train.ds_config=FILE; a bare
    --deepspeed ("use DeepSpeed") is dropped; the launcher's --local_rank is left for the entry point."""
    cfg, rest = load_config(["--deepspeed", "--deepspeed_config", "my.json", "--local_rank=1", "--task", "rte"])
    assert cfg.train.ds_config == "my.json" and rest == ["--local_rank=1", "--task", "rte"]
    assert load_config(["--deepspeed_config=my.json", "--deepspeed"])[0].train.ds_config == "my.json"
    assert load_config(["--deepspeed", "hf.json"])[0].train.ds_config == "hf.json"
    assert load_config(["--deepspeed_config=a.json", "--train.ds_config=./a.json"])[0].train.ds_config == "./a.json"
    assert load_config(["--deepspeed"])[0].train.ds_config == "ds_configs/zero2.json"


def test_two_different_ds_config_files_are_an_error(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  ds_config: ds_configs/zero3.json\n")
    cfg, _ = load_config(["--config", str(f), "--deepspeed_config", "mine.json"])
    assert cfg.train.ds_config == "mine.json"  # a flag beats the file, as --train.ds_config does
    with pytest.raises(ConfigError, match=re.escape(
            "two DeepSpeed config files: --deepspeed_config=a.json, --train.ds_config=b.json; give one of them")):
        load_config(["--deepspeed_config", "a.json", "--train.ds_config=b.json"])
    with pytest.raises(ConfigError, match="--deepspeed_config needs a value"):
        load_config(["--deepspeed_config"])


def test_finetune_command_line_takes_the_deepspeed_launchers_flags():
    """What `deepspeed gptscale/finetune.py --task rte --deepspeed --deepspeed_config ds.json` hands the script
    (the launcher appends --local_rank=N)."""
    from gptscale.finetune import resolve

    cfg = resolve(["--task", "rte", "--deepspeed", "--deepspeed_config", "ds.json", "--local_rank=0"])
    assert (cfg.finetune.task, cfg.train.ds_config) == ("rte", "ds.json")
