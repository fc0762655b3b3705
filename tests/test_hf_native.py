"""Fine-tuned folders opened by transformers as what they are (gptscale.hf.task_export): sequence classifiers
with the head bias folded exactly, double-heads models for multiple choice, GPT-1's task tokens added by the
tokenizer, and `pipeline(...)` agreeing with `gptscale predict` on a real SST-2 fine-tune."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2DoubleHeadsModel,
    OpenAIGPTDoubleHeadsModel,
    pipeline,
)

from gptscale.config import model_config
from gptscale.hf.convert import LM_DIR
from gptscale.model import GPT
from gptscale.tasks import TASKS, Example, collate, encode_example
from gptscale.tasks.predict import Predictor, save_task_model
from gptscale.tokenizer import Tokenizer
from helpers import TINY, gptscale

TOL = 1e-5


def _glue(data_dir: Path, task: str, split: str = "dev.tsv") -> list[list[str]]:
    rows = (data_dir / "glue" / task / split).read_text(encoding="utf-8").splitlines()
    return list(csv.reader(rows, delimiter="\t", quoting=csv.QUOTE_NONE))


def _folder(tmp: Path, task_name: str, tok_dir: Path, ln: str = "pre", truncation: str = "share",
            n_ctx: int = 64) -> Path:
    """A task folder from a seeded random body and a head with a large bias (what finetune.save_best writes)."""
    task = TASKS[task_name]
    torch.manual_seed(0)
    preset = "gpt2-tiny" if ln == "pre" else "gpt1"
    overrides = {} if ln == "pre" else dict(n_layer=2, d_model=64, n_head=4, d_ff=256)
    cfg = model_config(preset, vocab_size=Tokenizer.load(tok_dir).vocab_size, n_ctx=n_ctx, dropout=0.0, **overrides)
    gpt = GPT(cfg)
    out = 1 if task.kind in ("multiple_choice", "regression") else task.num_labels
    state = {f"gpt.{k}": v for k, v in gpt.state_dict().items()}
    state["head.weight"] = torch.randn(out, cfg.d_model) * 0.3
    state["head.bias"] = torch.randn(out) * 2.0  # far from zero: a dropped bias shows
    folder = tmp / f"{task_name}-{ln}"
    save_task_model(folder, state, cfg, task, Tokenizer.load(tok_dir), {"pair": task.kind != "classification"},
                    truncation=truncation)
    return folder


def _ours(folder: Path, examples: list[Example]) -> torch.Tensor:
    """gptscale's logits for the examples (the Predictor's model, as `gptscale predict` runs it)."""
    pred = Predictor(folder)
    enc = [encode_example(pred.task, ex, pred.tok, pred.meta["max_len"], pred.meta["truncation"]) for ex in examples]
    with torch.no_grad():
        return pred.model(*collate(enc, pred.tok.pad_id))[0]


def _loads_clean(cls, folder: Path):
    model, info = cls.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize("ln", ["pre", "post"])
def test_classifier_folder_is_a_native_hf_classifier(tmp_path, tok_dir, data_dir, ln):
    """SST-2 (single text) and RTE (pair): AutoModelForSequenceClassification loads every weight, the tokenizer
    adds the task tokens, and the logits equal gptscale's to 1e-5, over-long inputs included (truncation=True)."""
    for task, rows, cols in (("sst2", _glue(data_dir, "SST-2")[1:33], (0,)), ("rte", _glue(data_dir, "RTE")[1:33], (1, 2))):
        folder = _folder(tmp_path, task, tok_dir, ln)
        texts = [[r[c] for c in cols] for r in rows]
        texts[0] = [t * 12 for t in texts[0]]  # longer than the context
        model = _loads_clean(AutoModelForSequenceClassification, folder)
        expected = {"sst2": ["negative", "positive"], "rte": ["entailment", "not_entailment"]}[task]
        assert type(model).__name__ == ("GPT2" if ln == "pre" else "OpenAIGPT") + "ForSequenceClassification"
        assert [model.config.id2label[i] for i in range(2)] == expected and model.config.label2id[expected[1]] == 1
        assert model.config.pad_token_id == Tokenizer.load(tok_dir).pad_id
        tok = AutoTokenizer.from_pretrained(str(folder))
        batch = tok(*zip(*texts), padding=True, truncation=True, return_tensors="pt")
        assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[1] == 64
        gs, t = Tokenizer.load(tok_dir), TASKS[task]
        got = [ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
        assert got == [encode_example(t, Example(*x), gs, 64, "share")[0] for x in texts]  # HF truncation = "share"
        assert got[1][0] == gs.start_id and got[1][-1] == gs.extract_id
        with torch.no_grad():
            theirs = model(**batch).logits
        ours = _ours(folder, [Example(*t) for t in texts])
        assert (theirs - ours).abs().max().item() < TOL
        assert ours.abs().max() > 0.5  # the folded bias is in there
        clf = pipeline("text-classification", model=str(folder), truncation=True)
        inputs = [{"text": t[0], "text_pair": t[1]} if len(t) == 2 else t[0] for t in texts]
        conf, pred = ours.softmax(-1).max(-1)
        for got in (clf(inputs, batch_size=8), [clf(x) for x in inputs[:3]]):
            got = [g[0] if isinstance(g, list) else g for g in got]
            assert [g["label"] for g in got] == [expected[i] for i in pred[:len(got)].tolist()]
            assert [g["score"] for g in got] == pytest.approx(conf[:len(got)].tolist(), abs=TOL)


def test_similarity_recipe_sums_both_orderings(tmp_path, tok_dir, data_dir):
    """MRPC (classification) and STS-B (regression) are symmetric: the documented recipe, the sum of both
    orderings' logits, is gptscale's output; STS-B is a regression model to transformers."""
    for task, split, cols in (("mrpc", "dev.tsv", (3, 4)), ("stsb", "dev.tsv", (7, 8))):
        rows = _glue(data_dir, {"mrpc": "MRPC", "stsb": "STS-B"}[task], split)[1:17]
        pairs = [(r[cols[0]], r[cols[1]]) for r in rows]
        folder = _folder(tmp_path, task, tok_dir)
        model = _loads_clean(AutoModelForSequenceClassification, folder)
        tok = AutoTokenizer.from_pretrained(str(folder))
        a, b = zip(*pairs)
        with torch.no_grad():
            logits = (model(**tok(list(a), list(b), padding=True, truncation=True, return_tensors="pt")).logits
                      + model(**tok(list(b), list(a), padding=True, truncation=True, return_tensors="pt")).logits)
        ours = _ours(folder, [Example(x, y) for x, y in pairs])
        if task == "stsb":
            assert model.config.problem_type == "regression" and model.config.num_labels == 1
            logits = logits.squeeze(-1)
        assert (logits - ours).abs().max().item() < TOL


@pytest.mark.parametrize("ln", ["pre", "post"])
def test_multiple_choice_folder_is_a_double_heads_model(tmp_path, tok_dir, data_dir, ln):
    """Story Cloze as GPT2DoubleHeadsModel / OpenAIGPTDoubleHeadsModel: mc_logits at the extract tokens equal
    gptscale's choice scores; AutoModelForCausalLM loads the same, unfolded body."""
    folder = _folder(tmp_path, "story_cloze", tok_dir, ln, n_ctx=256)  # stories fit: no truncation
    cls = GPT2DoubleHeadsModel if ln == "pre" else OpenAIGPTDoubleHeadsModel
    model = _loads_clean(cls, folder)
    task = TASKS["story_cloze"]
    examples = task.load(data_dir, "val")[:8]
    assert all(ex.text_b is None for ex in examples)  # (RACE: the question follows the article, encoded alone)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert max(len(tok(ex.text_a, c)["input_ids"]) for ex in examples for c in ex.choices) < 256
    n = len(examples[0].choices)
    ctx = [ex.text_a for ex in examples for _ in range(n)]
    ans = [c for ex in examples for c in ex.choices]
    enc = tok(ctx, ans, padding=True, truncation=True, return_tensors="pt")
    ids = enc["input_ids"].view(len(examples), n, -1)
    mask = enc["attention_mask"].view(len(examples), n, -1)
    with torch.no_grad():
        # OpenAIGPTDoubleHeadsModel does not flatten a (batch, choices, seq) mask itself (transformers 5.25)
        am = mask if ln == "pre" else mask.view(-1, mask.size(-1))
        mc = model(input_ids=ids, attention_mask=am, mc_token_ids=mask.sum(-1) - 1).mc_logits
    assert (mc - _ours(folder, examples)).abs().max().item() < TOL
    lm = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    body = Predictor(folder).model.gpt.eval()
    x = ids[0, :1]
    with torch.no_grad():
        assert (lm(x).logits - body(x)[0]).abs().max().item() < TOL


def test_classifier_body_loads_as_a_causal_lm_from_lm(tmp_path, tok_dir):
    """The unfolded fine-tuned body: AutoModelForCausalLM on RUN_DIR/model/lm gives the fine-tuned GPT's logits,
    with a plain tokenizer (no task tokens added)."""
    folder = _folder(tmp_path, "sst2", tok_dir)
    lm = _loads_clean(AutoModelForCausalLM, folder / LM_DIR)
    body = Predictor(folder).model.gpt.eval()
    text = "It was the best of times, it was the worst of times."
    ids = AutoTokenizer.from_pretrained(str(folder / LM_DIR))(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == Tokenizer.load(tok_dir).encode(text)
    with torch.no_grad():
        assert (lm(ids).logits - body(ids)[0]).abs().max().item() < TOL


@pytest.fixture(scope="module")
def sst2_folder(tmp_path_factory, tok_dir, data_dir) -> Path:
    """A real SST-2 fine-tune (a few hundred examples, the tiny model) through the CLI."""
    run = tmp_path_factory.mktemp("sst2") / "run"
    gptscale("finetune", "--task", "sst2", "--init", "none", "--data-dir", data_dir, f"--data.tokenizer={tok_dir}",
             f"--train.run_dir={run}", "--finetune.train_samples=256", "--finetune.eval_samples=64",
             "--finetune.epochs=1", *TINY)
    return run / "model"


def test_pipeline_and_plain_inference_code_agree_with_gptscale_predict(sst2_folder, data_dir, tmp_path):
    """The ordinary transformers code, unchanged, on a real SST-2 folder: `pipeline("text-classification")` on
    single texts, batches and an over-long text, and AutoTokenizer + AutoModelForSequenceClassification +
    softmax, give `gptscale predict`'s labels and confidences."""
    texts = [r[0] for r in _glue(data_dir, "SST-2")[1:25]]
    texts[3] = " ".join(texts[:12]) * 3  # over the 64-token context
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts) + "\n")
    ours = [line.split("\t") for line in gptscale("predict", "--model", sst2_folder, "--file", f).stdout.splitlines()]
    clf = pipeline("text-classification", model=str(sst2_folder), truncation=True)
    for got in (clf(texts), clf(texts, batch_size=8), [clf(t)[0] for t in texts[:4]]):
        assert [g["label"] for g in got] == [o[0] for o in ours[:len(got)]]
        assert [g["score"] for g in got] == pytest.approx([float(o[1]) for o in ours[:len(got)]], abs=1e-4)
    tok = AutoTokenizer.from_pretrained(str(sst2_folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(sst2_folder)).eval()
    with torch.no_grad():
        probs = model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits.softmax(-1)
    assert [model.config.id2label[i] for i in probs.argmax(-1).tolist()] == [o[0] for o in ours]
    assert probs.max(-1).values.tolist() == pytest.approx([float(o[1]) for o in ours], abs=1e-4)
    info = json.loads((sst2_folder / "config.json").read_text())
    assert info["architectures"] == ["GPT2ForSequenceClassification"] and info["gptscale"]["task"] == "sst2"


def test_predict_reads_folders_written_before(tmp_path, tok_dir, data_dir):
    """A folder of the previous layout (config.json a causal LM, no lm/) still predicts the same."""
    import shutil

    new = _folder(tmp_path, "rte", tok_dir)
    old = tmp_path / "old"
    shutil.copytree(new, old)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(new / LM_DIR / name, old / name)
    shutil.rmtree(old / LM_DIR)
    examples = [Example(r[1], r[2]) for r in _glue(data_dir, "RTE")[1:9]]
    assert Predictor(old).predict(examples) == Predictor(new).predict(examples)
