"""GPT-1 fine-tuning: heads, auxiliary LM masking, and a 2-rank run as users launch it."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptscale.config import model_config
from gptscale.model import GPT
from gptscale.tasks.heads import TaskModel, predictions, task_loss
from helpers import REPO, base_config, free_port, launch


def tiny(kind, num_labels=2):
    torch.manual_seed(0)
    return TaskModel(GPT(model_config("gpt2-tiny", dropout=0.0)), kind, num_labels, clf_dropout=0.0).eval()


def test_similarity_adds_both_orderings():
    m = tiny("similarity")
    ab, ba = torch.randint(3, 512, (1, 1, 9)), torch.randint(3, 512, (1, 1, 9))
    pos, mask = torch.full((1, 2), 8), torch.ones(1, 2, 9, dtype=torch.bool)
    l1, _ = m(torch.cat([ab, ba], 1), pos, mask)
    l2, _ = m(torch.cat([ba, ab], 1), pos, mask)
    assert torch.allclose(l1, l2, atol=1e-6)  # order of the two sequences does not matter: states are added
    h = m.gpt.hidden(torch.cat([ab, ba], 1)[0])[:, 8]  # (2, C)
    assert torch.allclose(l1[0], m.head(h.sum(0)), atol=1e-5)


@torch.no_grad()
def test_multiple_choice_scores_each_choice():
    m = tiny("multiple_choice", 4)
    ids = torch.randint(3, 512, (2, 4, 10))
    logits, _ = m(ids, torch.full((2, 4), 9), torch.ones(2, 4, 10, dtype=torch.bool))
    assert logits.shape == (2, 4)
    single, _ = m(ids[:, 2:3], torch.full((2, 1), 9), torch.ones(2, 1, 10, dtype=torch.bool))
    assert torch.allclose(logits[:, 2], single[:, 0], atol=1e-5)  # a choice's score ignores the others
    pred, conf = predictions("multiple_choice", logits)
    assert torch.equal(pred, logits.argmax(-1)) and torch.allclose(conf, logits.softmax(-1).max(-1).values)
    assert task_loss("multiple_choice", logits, torch.tensor([1, 3])).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([1, 3])).item())


def test_aux_lm_loss_ignores_padding():
    m = tiny("classification")
    ids = torch.randint(3, 512, (1, 1, 12))
    mask = torch.ones(1, 1, 12, dtype=torch.bool)
    mask[..., 8:] = False  # 4 padding positions
    _, lm = m(ids, torch.full((1, 1), 7), mask)
    logits = m.gpt.lm_head(m.gpt.hidden(ids[0]))[0, :7]  # predictions of tokens 1..7
    assert lm.item() == pytest.approx(F.cross_entropy(logits, ids[0, 0, 1:8]).item(), rel=1e-5)
    ids2 = ids.clone()
    ids2[..., 8:] = 0  # what sits in padding does not change the loss
    _, lm2 = m(ids2, torch.full((1, 1), 7), mask)
    assert lm2.item() == pytest.approx(lm.item(), rel=1e-6)


def test_regression_head():
    m = tiny("regression", 1)
    logits, _ = m(torch.randint(3, 512, (3, 2, 6)), torch.full((3, 2), 5), torch.ones(3, 2, 6, dtype=torch.bool))
    assert logits.shape == (3,)
    assert task_loss("regression", logits, torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(
        F.mse_loss(logits, torch.tensor([1.0, 2.0, 3.0])).item())


def test_rte_two_ranks_with_deepspeed_launcher(tmp_path, shard_dir, tok_dir, data_dir):
    """Pre-train a tiny model (1 process), then `deepspeed --num_gpus 2 gptscale/finetune.py --task rte`."""
    cfg = base_config(tmp_path, shard_dir, tok_dir, max_steps=4, eval_interval=0, checkpoint_interval=4,
                      warmup_steps=1)
    launch(cfg, nproc=1)
    bin_dir = os.path.dirname(sys.executable)
    cmd = [os.path.join(bin_dir, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "gptscale" / "finetune.py"), "--task", "rte", "--init", str(tmp_path / "run"),
           "--data-dir", str(data_dir), "--train-samples", "64", "--finetune.eval_samples=40",
           "--epochs=2", "--batch-size", "16", "--finetune.micro_batch_size=4", "--lm-coef", "0.25",
           "--train.precision=fp32", f"--train.run_dir={tmp_path / 'ft'}", "--train.ds_config=ds_configs/zero2.json"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PATH=bin_dir + os.pathsep + os.environ["PATH"])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["task"] == "rte" and m["primary"] == "accuracy" and len(m["epochs"]) == 2
    import yaml

    ft = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["finetune"]
    assert (ft["lm_coef"], ft["train_samples"], ft["batch_size"]) == (0.25, 64, 16)  # the flags took effect
    assert 0.0 <= m["best"]["accuracy"] <= 1.0
    rows = (tmp_path / "ft" / "predictions_dev.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction\tconfidence\tlabel" and len(rows) == 41  # every dev example once, none doubled
    assert {r.split("\t")[1] for r in rows[1:]} <= {"entailment", "not_entailment"}


def test_finetune_flags_resolve_in_order_and_unknown_ones_fail(tmp_path):
    from gptscale.config import ConfigError
    from gptscale.finetune import resolve

    f = tmp_path / "ft.yaml"
    f.write_text("finetune:\n  lm_coef: 0.1\n  epochs: 5\n")
    cfg = resolve(["--config", str(f), "--task", "sst2", "--lm-coef=0", "--train-samples", "16",
                   "--transfer-layers", "3", "--lr", "1e-4", "--seed=7", "--finetune.lr=2e-4"])
    ft = cfg.finetune
    assert (ft.task, ft.lm_coef, ft.epochs, ft.train_samples, ft.transfer_layers, ft.seed) == ("sst2", 0.0, 5, 16, 3, 7)
    assert ft.lr == 2e-4  # the later of --lr and --finetune.lr wins
    assert cfg.train.run_dir == "runs/finetune/sst2"
    assert resolve(["--task", "rte", "--train.run_dir=x"]).train.run_dir == "x"
    with pytest.raises(ConfigError, match="finetune.train_samples='many'"):
        resolve(["--train-samples", "many"])
    with pytest.raises(ConfigError, match="--lm-coef needs a value"):
        resolve(["--lm-coef"])
    with pytest.raises(SystemExit):
        resolve(["--lm_coeff", "0.3"])


def test_train_recipe_keys_are_refused_with_the_finetune_key_to_use(tmp_path, capsys):
    from gptscale.config import ConfigError
    from gptscale.finetune import cli, recipe, resolve

    for flag, instead in (("--train.lr=1e-3", "finetune.lr"), ("--train.max_steps=10", "finetune.epochs"),
                          ("--train.warmup_steps", "finetune.warmup_fraction"),
                          ("--train.weight_decay=0", "finetune.weight_decay"), ("--train.seed=3", "finetune.seed")):
        args = [flag, "5"] if "=" not in flag else [flag]
        with pytest.raises(ConfigError, match=rf"{flag.split('=')[0][2:]}: fine-tuning does not read it .* set {instead}"):
            resolve(["--task", "rte", *args])
    f = tmp_path / "both.yaml"  # one file for both loops: its pre-training recipe is refused too
    f.write_text("train:\n  micro_batch_size: 4\n  precision: fp32\n")
    assert cli(["--config", str(f), "--task", "rte"]) == 2
    assert "train.micro_batch_size: fine-tuning does not read it" in capsys.readouterr().err
    # run-wide train keys are read, and the recipe that reaches the engine is the finetune section's
    cfg = resolve(["--task", "rte", "--train.precision=fp32", "--train.log_interval=3", "--finetune.weight_decay=0.1",
                   "--finetune.grad_clip=0.5", "--lr=1e-4", "--batch-size=16", "--finetune.micro_batch_size=4"])
    t = recipe(cfg, world=2, steps=100)
    assert (t.precision, t.log_interval, t.lr, t.weight_decay, t.grad_clip) == ("fp32", 3, 1e-4, 0.1, 0.5)
    assert (t.micro_batch_size, t.grad_accum_steps, t.global_batch_size, t.warmup_steps) == (4, 2, 16, 1)
