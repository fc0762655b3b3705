"""Fine-tuning outputs: per-split metrics, GLUE submissions, the fine-tuned model folder and `gptscale predict`;
initialisation from an export / a foreign-vocabulary HF folder; --transfer-layers; the few-shot sweep."""

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptscale.config import RunConfig, model_config
from gptscale.model import GPT
from gptscale.tasks.heads import load_init, reinit_after
from helpers import REPO, TINY, base_config, child_env, gptscale, launch


@pytest.fixture(scope="module")
def rte_run(tmp_path_factory, tok_dir, data_dir) -> Path:
    run = tmp_path_factory.mktemp("rte") / "run"
    gptscale("finetune", "--task", "rte", "--init", "none", "--data-dir", data_dir, f"--data.tokenizer={tok_dir}",
             f"--train.run_dir={run}", "--finetune.train_samples=48", "--finetune.eval_samples=24",
             "--finetune.epochs=2", *TINY)
    return run


def test_metrics_per_split_and_glue_submission(rte_run):
    m = json.loads((rte_run / "metrics.json").read_text())
    assert list(m["splits"]) == ["dev", "test"] and m["splits"]["dev"] == {
        k: v for k, v in m["best"].items() if k != "epoch"}
    sub = m["splits"]["test"]["submission"]
    assert sub.endswith("submission/RTE.tsv")
    rows = list(csv.reader(Path(sub).read_text().splitlines(), delimiter="\t"))
    assert rows[0] == ["index", "prediction"] and len(rows) == 25
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(24)]  # GLUE's own index column, in order
    assert {r[1] for r in rows[1:]} <= {"entailment", "not_entailment"}


def test_tensorboard_has_dev_metric_per_epoch(rte_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(rte_run / "tb"))
    acc.Reload()
    dev = acc.Scalars("dev/accuracy")
    history = json.loads((rte_run / "metrics.json").read_text())["epochs"]
    assert [e.step for e in dev] == [1, 2]
    assert [e.value for e in dev] == pytest.approx([h["accuracy"] for h in history])
    assert [e.step for e in acc.Scalars("finetune/task_loss")] == [10]  # 2 epochs x 6 steps, every 10th logged


def test_model_folder_predict_matches_training_eval(rte_run, data_dir, tmp_path):
    """The exported fine-tuned folder, read back by `gptscale predict`, labels the dev examples exactly as the
    run's own evaluation did (predictions_dev.tsv of the best epoch)."""
    folder = rte_run / "model"
    meta = json.loads((folder / "gptscale_task.json").read_text())
    assert meta["task"] == "rte" and meta["pair"] and meta["epoch"] == json.loads(
        (rte_run / "metrics.json").read_text())["best"]["epoch"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(folder))  # the GPT body is a plain HF model
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert hf.config.vocab_size >= len(tok) and tok.convert_tokens_to_ids("<|extract|>") is not None
    dev = list(csv.reader((data_dir / "glue" / "RTE" / "dev.tsv").read_text().splitlines(), delimiter="\t",
                          quoting=csv.QUOTE_NONE))[1:25]
    batch = tmp_path / "dev.tsv"
    batch.write_text("".join(f"{r[1]}\t{r[2]}\n" for r in dev))
    out = gptscale("predict", "--model", folder, "--file", batch).stdout.splitlines()
    expected = [r.split("\t")[1:3] for r in (rte_run / "predictions_dev.tsv").read_text().splitlines()[1:]]
    assert [line.split("\t")[0] for line in out] == [e[0] for e in expected]
    assert [float(line.split("\t")[1]) for line in out] == pytest.approx([float(e[1]) for e in expected], abs=2e-4)
    assert all(0.5 <= float(line.split("\t")[1]) <= 1.0 for line in out)
    one = gptscale("predict", "--model", folder, "--text", dev[0][1], "--text-pair", dev[0][2]).stdout.split()
    assert one[0] == expected[0][0]
    bad = gptscale("predict", "--model", folder, "--text", "only one sentence", expect_ok=False)
    assert bad.returncode == 2 and "--text-pair" in bad.stderr


DAMAGE = {
    "truncated_weights": ("model.safetensors", "not a readable safetensors file (Error while deserializing header"),
    "truncated_head": ("task_head.safetensors", "not a readable safetensors file"),
    "bad_json": ("gptscale_task.json", "not valid JSON (Expecting ':' delimiter: line 3"),
    "missing_keys": ("gptscale_task.json", "no key(s) ['kind', 'max_len']"),
    "non_utf8_file": ("../batch.tsv", ":2: not UTF-8: byte 0xe9 at byte offset 35 (line 2, byte 6 of the line)"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_predict_on_a_damaged_folder_or_file_is_a_one_line_error(rte_run, tmp_path, damage):
    """A truncated safetensors file, a task JSON that is not JSON or lacks keys (a copy of the run's real model
    folder, damaged), or a non-UTF-8 --file: rc 2 and one line naming the file and the fix, no traceback."""
    folder = tmp_path / "model"
    shutil.copytree(rte_run / "model", folder)
    name, why = DAMAGE[damage]
    target = folder / name
    if damage.startswith("truncated"):
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "bad_json":
        target.write_text(target.read_text().replace('"kind":', '"kind"', 1))  # as a hand edit might leave it
    elif damage == "missing_keys":
        meta = json.loads(target.read_text())
        target.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("kind", "max_len")}))
    batch = tmp_path / "batch.tsv"
    batch.write_bytes(b"A man sleeps.\tA person rests.\n" + ("A caf\u00e9.\tIt is open.\n".encode(
        "latin-1") if damage == "non_utf8_file" else b""))
    p = gptscale("predict", "--model", folder, "--file", batch, expect_ok=False)
    lines = [line for line in p.stderr.splitlines() if line.startswith("gptscale predict: error: ")]
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(lines) == 1, p.stderr[-3000:]
    where = batch if damage == "non_utf8_file" else target
    assert lines[0].startswith(f"gptscale predict: error: {where}{'' if where is batch else ': '}{why}"), lines[0]
    assert ("re-encode the file as UTF-8" if where is batch else "re-run the fine-tuning that wrote it") in lines[0]


def test_sst2_bf16_zero1_submission_uses_glue_digits(tmp_path, tok_dir, data_dir):
    run = tmp_path / "run"
    gptscale("finetune", "--task", "sst2", "--init", "none", "--data-dir", data_dir, f"--data.tokenizer={tok_dir}",
             f"--train.run_dir={run}", "--finetune.train_samples=16", "--finetune.eval_samples=10",
             "--finetune.epochs=1", *TINY, "--train.precision=bf16", "--train.ds_config=ds_configs/zero1.json")
    assert "precision: bf16" in (run / "config.yaml").read_text()
    rows = (run / "submission" / "SST-2.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 11 and {r.split("\t")[1] for r in rows[1:]} <= {"0", "1"}
    out = gptscale("predict", "--model", run / "model", "--text", "a gripping, funny film").stdout.split()
    assert out[0] in ("negative", "positive") and 0.5 <= float(out[1]) <= 1.0


def _foreign_gpt2_folder(folder: Path, corpus: Path) -> int:
    """A GPT-2-family HF folder with its own byte-level BPE that has no GPT-1 task tokens (like gpt2)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(corpus)], vocab_size=600, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
                    ).save_pretrained(str(folder))
    return len(tok)


def test_foreign_vocab_gets_new_special_rows(tmp_path, shakespeare, data_dir):
    folder = tmp_path / "gpt2like"
    V = _foreign_gpt2_folder(folder, shakespeare)
    from transformers import GPT2LMHeadModel

    hf_wte = GPT2LMHeadModel.from_pretrained(str(folder)).transformer.wte.weight.detach()
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, init=str(folder)))
    torch.manual_seed(1)
    gpt, tok = load_init(cfg)
    assert (tok.start_id, tok.delim_id, tok.extract_id) == (V, V + 1, V + 2)
    assert gpt.cfg.vocab_size == V + 3 and gpt.wte.weight.shape == (V + 3, 64)
    assert torch.equal(gpt.wte.weight[:V], hf_wte)  # pre-trained rows untouched
    new = gpt.wte.weight[V:]
    assert 0.01 < new.std().item() < 0.03 and abs(new.mean().item()) < 0.01  # N(0, 0.02)
    assert gpt.lm_head.weight is gpt.wte.weight  # still tied
    ids = tok.encode("To be, or not to be")
    assert max(ids) < V  # text never produces the new ids
    # and the whole pipeline runs on it: fine-tune, model folder with the grown tokenizer, predict
    run = tmp_path / "run"
    gptscale("finetune", "--task", "rte", "--init", folder, "--data-dir", data_dir, f"--train.run_dir={run}",
             "--finetune.train_samples=16", "--finetune.eval_samples=8", "--finetune.epochs=1", *TINY[3:])
    out = gptscale("predict", "--model", run / "model", "--text", "A man sleeps.", "--text-pair", "He rests.")
    assert out.stdout.split()[0] in ("entailment", "not_entailment")


def test_init_from_run_and_its_export_agree_and_transfer_layers(tmp_path, shard_dir, tok_dir):
    launch(base_config(tmp_path, shard_dir, tok_dir, max_steps=2, eval_interval=0, checkpoint_interval=2,
                       warmup_steps=1), nproc=1)
    gptscale("export", tmp_path / "run", "--out", tmp_path / "hf")
    cfg = RunConfig()

    def init(path):
        return load_init(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, init=str(path))))

    (a, tok_a), (b, tok_b) = init(tmp_path / "run"), init(tmp_path / "hf")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tok_a.encode("Hamlet, Prince") == tok_b.encode("Hamlet, Prince")
    assert (tok_a.start_id, tok_a.extract_id) == (tok_b.start_id, tok_b.extract_id)
    # --transfer-layers k: embeddings and the first k blocks stay, later blocks are re-initialised
    torch.manual_seed(0)
    reinit_after(b, 1)
    sb = b.state_dict()
    for k in sa:
        same = torch.equal(sa[k], sb[k])
        if k.startswith("h.1.") and k.endswith("weight") and "ln" not in k:
            assert not same, k
        elif not k.startswith("h.1."):
            assert same, k
    cfg_bad = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, init=str(tmp_path / "nothing")))
    with pytest.raises(Exception, match="nothing"):
        load_init(cfg_bad)


def test_fewshot_sweep_table_and_resume(tmp_path, tok_dir, data_dir):
    out = tmp_path / "sweep"
    args = ["fewshot", "--task", "sst2", "--train-samples", "8,16", "--seeds", "1", "--out", out, "--",
            "--init", "none", "--data-dir", data_dir, f"--data.tokenizer={tok_dir}", "--finetune.eval_samples=16",
            "--finetune.epochs=1", *TINY]
    first = gptscale(*args).stdout
    rows = list(csv.DictReader((out / "results.tsv").read_text().splitlines(), delimiter="\t"))
    assert [(r["train_samples"], r["seed"], r["status"]) for r in rows] == [("8", "1", "done"), ("16", "1", "done")]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    m8 = json.loads((out / "n8_s1" / "metrics.json").read_text())
    assert m8["best"]["accuracy"] == pytest.approx(float(rows[0]["accuracy"]), abs=1e-4)
    assert "N=8:" in first and "N=16:" in first
    again = gptscale(*args).stdout
    assert again.count("done already") == 2  # an interrupted or repeated sweep does not redo finished runs


def test_reinit_after_keeps_only_first_blocks():
    torch.manual_seed(0)
    m = GPT(model_config("gpt2-tiny"))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    reinit_after(m, 1)
    n_layer = m.cfg.n_layer
    for k, v in m.state_dict().items():
        if any(k.startswith(f"h.{i}.") for i in range(1, n_layer)) and k.endswith("weight") and ".ln" not in k:
            assert not torch.equal(v, before[k]), k
        elif not any(k.startswith(f"h.{i}.") for i in range(1, n_layer)):
            assert torch.equal(v, before[k]), k


def test_zero3_two_ranks_model_folder_is_the_gathered_model(tmp_path, tok_dir, data_dir):
    """ZeRO-3 partitions every weight across 2 ranks: the saved model folder must hold the gathered weights,
    so `gptscale predict` reproduces the run's own dev predictions."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "gptscale" / "finetune.py"), "--task", "rte", "--init", "none", "--data-dir", str(data_dir),
           f"--data.tokenizer={tok_dir}", f"--train.run_dir={run}", "--finetune.train_samples=32",
           "--finetune.eval_samples=16", "--finetune.epochs=1", *TINY, "--train.ds_config=ds_configs/zero3.json",
           "--finetune.micro_batch_size=4"]
    p = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600, cwd=str(REPO), check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    dev = list(csv.reader((data_dir / "glue" / "RTE" / "dev.tsv").read_text().splitlines(), delimiter="\t",
                          quoting=csv.QUOTE_NONE))[1:17]
    batch = tmp_path / "dev.tsv"
    batch.write_text("".join(f"{r[1]}\t{r[2]}\n" for r in dev))
    out = gptscale("predict", "--model", run / "model", "--file", batch).stdout.splitlines()
    expected = [r.split("\t")[1:3] for r in (run / "predictions_dev.tsv").read_text().splitlines()[1:]]
    assert [line.split("\t")[0] for line in out] == [e[0] for e in expected]
    confs = [float(line.split("\t")[1]) for line in out]
    assert confs == pytest.approx([float(e[1]) for e in expected], abs=2e-4)
    assert len({round(c, 3) for c in confs}) > 4  # distinct per example: a real comparison, not a constant


def test_init_from_incompatible_folders_is_a_clear_error(tmp_path, data_dir, shakespeare):
    """A non-GPT HF folder, or a GPT-2 folder missing a weight, stops with the folder and the reason; never
    random weights."""
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    p = gptscale("finetune", "--task", "rte", "--init", bert, "--data-dir", data_dir,
                 f"--train.run_dir={tmp_path / 'r1'}", expect_ok=False)
    assert p.returncode == 2 and f"{bert}/config.json" in p.stderr and "'bert' is not supported" in p.stderr
    folder = tmp_path / "gpt2like"
    _foreign_gpt2_folder(folder, shakespeare)
    from safetensors.torch import load_file, save_file

    w = load_file(str(folder / "model.safetensors"))
    del w["transformer.h.1.mlp.c_fc.weight"]
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    p = gptscale("finetune", "--task", "rte", "--init", folder, "--data-dir", data_dir,
                 f"--train.run_dir={tmp_path / 'r2'}", expect_ok=False)
    assert p.returncode == 2 and str(folder) in p.stderr and "h.1.mlp.c_fc.weight" in p.stderr
