"""Fine-tuned model folders and `gptscale predict` (the seed's predict_sentiment, for every task).

    gptscale predict --model runs/finetune/sst2/model --text "A gripping, funny film."
    gptscale predict --model runs/finetune/rte/model --text "A man sleeps." --text-pair "A person rests."
    gptscale predict --model runs/finetune/sst2/model --file reviews.tsv [--out preds.tsv]

A fine-tuned model folder (written by finetune.py at its best dev epoch, atomically) is the task's native
Hugging Face model (gptscale.hf.task_export: `AutoModelForSequenceClassification`, or a double-heads model for
multiple choice, whose tokenizer adds GPT-1's task tokens itself), plus what `gptscale predict` reads:

    config.json, model.safetensors         the HF classifier / double-heads model (head bias folded exactly)
    tokenizer files                        incl. the <|start|> <|delim|> <|extract|> post-processor
    lm/                                    classifiers: the fine-tuned body as an exact causal LM
    task_head.safetensors                  gptscale's head: head.weight (out, d_model), head.bias (out,)
    gptscale_task.json                     task name, kind, labels, symmetric, truncation, dev metrics

`gptscale predict` runs the unfolded body (lm/, or the folder itself for multiple choice and for folders written
before, whose config.json is a causal LM) with task_head.safetensors.

A folder whose gptscale_task.json is not JSON or lacks a key (TASK_KEYS), or whose safetensors files are
truncated, is a PredictError naming the file: re-run the fine-tuning that wrote it, or copy it again.

`--file` reads one example per line: `text` or `text<TAB>text_pair` (a TSV/CSV with a header naming `text`
and optionally `text_pair`, or JSON lines with those keys, also work); it prints `label<TAB>confidence`
per line (regression: the value), or writes them as a TSV with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gptscale.errors import GptscaleError, run_cli
from gptscale.files import atomic_dir, atomic_write_bytes
from gptscale.hf.convert import load_hf
from gptscale.hf.task_export import write_task_folder
from gptscale.model import GPT
from gptscale.tasks import KINDS, TASKS, TRUNCATION, Example, Task, collate, encode_example
from gptscale.tasks.heads import TaskModel, predictions
from gptscale.tasks.readers import json_lines, read_rows
from gptscale.tokenizer import Tokenizer

TASK_FILE = "gptscale_task.json"
HEAD_FILE = "task_head.safetensors"


class PredictError(GptscaleError, ValueError):
    """A model folder or input file that cannot be used; the message names it and the fix."""


def save_task_model(out: Path, state: dict[str, torch.Tensor], model_cfg, task: Task, tok, info: dict[str, Any],
                    truncation: str = "halves") -> Path:
    """Write the fine-tuned model folder from a TaskModel state dict (keys `gpt.*`, `head.*`), atomically: the
    native Hugging Face model of the task (gptscale.hf.task_export) plus gptscale's own head and task file."""
    gpt = GPT(model_cfg)
    gpt.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("gpt.")}, strict=True)
    head = {k: state[k].detach().cpu().contiguous() for k in ("head.weight", "head.bias")}
    with atomic_dir(out, overwrite=True, kind="task-model") as tmp:
        write_task_folder(tmp, gpt, head, task, tok, {**info, "truncation": truncation})
        save_file(head, str(tmp / HEAD_FILE))
        meta = {"task": task.name, "kind": task.kind, "num_labels": task.num_labels,
                "label_names": task.label_names, "metrics": task.metrics, "symmetric": task.symmetric,
                "truncation": truncation, "max_len": model_cfg.n_ctx, **info}
        (tmp / TASK_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


REDO = ("the model folder is damaged or incomplete: re-run the fine-tuning that wrote it (`gptscale finetune ...` "
        "writes RUN_DIR/model at its best epoch) or copy the whole folder again")
TASK_KEYS: dict[str, type | tuple[type, ...]] = {
    "task": str, "kind": str, "num_labels": int, "label_names": list, "metrics": list, "symmetric": bool,
    "truncation": str, "max_len": int}
"""The keys of TASK_FILE that `gptscale predict` reads, with their JSON types."""


def read_task_file(folder: Path) -> dict[str, Any]:
    """The TASK_FILE of a fine-tuned model folder, checked: PredictError naming the file and the fix when it is
    missing, not JSON, or lacks a key `gptscale predict` needs."""
    f = folder / TASK_FILE
    if not f.is_file():
        raise PredictError(f"--model {folder}: no {TASK_FILE}; pass the `model` folder a fine-tuning run wrote "
                           f"(RUN_DIR/model), not a pre-training export")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PredictError(f"{f}: not valid JSON ({e}); {REDO}") from None
    if not isinstance(meta, dict):
        raise PredictError(f"{f}: expected a JSON object with {list(TASK_KEYS)}, got a {type(meta).__name__}; {REDO}")
    missing = [k for k in TASK_KEYS if k not in meta]
    if missing:
        raise PredictError(f"{f}: no key(s) {missing} (it needs {list(TASK_KEYS)}); {REDO}")
    bad = [f"{k}={meta[k]!r}" for k, t in TASK_KEYS.items() if not isinstance(meta[k], t)
           or (t is int and isinstance(meta[k], bool))]
    bad += [f"kind={meta['kind']!r}"] if meta["kind"] not in KINDS else []
    bad += [f"truncation={meta['truncation']!r}"] if meta["truncation"] not in TRUNCATION else []
    if not bad and (meta["num_labels"] < 1 or meta["label_names"] and len(meta["label_names"]) != meta["num_labels"]):
        bad.append(f"num_labels={meta['num_labels']!r} with label_names={meta['label_names']!r}")
    if bad:
        raise PredictError(f"{f}: bad value(s) {', '.join(bad)} (kind one of {list(KINDS)}, truncation one of "
                           f"{list(TRUNCATION)}, num_labels >= 1 and one per label name); {REDO}")
    return meta


def check_weights(folder: Path) -> None:
    """Every safetensors file of the folder has a whole header and all the bytes it promises (a truncated copy
    fails here, naming the file); the head file is there."""
    if not (folder / HEAD_FILE).is_file():
        raise PredictError(f"{folder}: no {HEAD_FILE} (the task head); {REDO}")
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except SafetensorError as e:
            raise PredictError(f"{f}: not a readable safetensors file ({e}): truncated or damaged; {REDO}") from None


def _task_from_meta(meta: dict[str, Any]) -> Task:
    known = TASKS.get(meta["task"])
    if known is not None and known.kind == meta["kind"] and known.num_labels == meta["num_labels"]:
        return known
    return Task(name=meta["task"], kind=meta["kind"], num_labels=meta["num_labels"],
                label_names=list(meta["label_names"]), metrics=list(meta["metrics"]), hub=("", None), folder="",
                sources={}, symmetric=bool(meta["symmetric"]))


class Predictor:
    """A fine-tuned model folder, ready to label text: `Predictor(dir).predict([Example(...), ...])`."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        self.folder = Path(folder)
        self.meta = read_task_file(self.folder)
        self.task = _task_from_meta(self.meta)
        check_weights(self.folder)
        self.tok = Tokenizer.load(self.folder)
        try:
            gpt = load_hf(self.folder)
        except SafetensorError as e:
            raise PredictError(f"{self.folder}: its weights do not load ({e}); {REDO}") from None
        self.model = TaskModel(gpt, self.task.kind, self.task.num_labels, clf_dropout=0.0)
        head_file = self.folder / HEAD_FILE
        try:
            head = load_file(str(head_file))
            self.model.head.load_state_dict({k.removeprefix("head."): v for k, v in head.items()})
        except (SafetensorError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0]
            raise PredictError(f"{head_file}: not the head {TASK_FILE} describes ({self.task.num_labels} "
                               f"output(s)): {reason}; {REDO}") from None
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def predict(self, examples: list[Example], batch_size: int = 32) -> list[tuple[str, float]]:
        """(label name or regression value as text, confidence) per example."""
        out: list[tuple[str, float]] = []
        for k in range(0, len(examples), batch_size):
            enc = [encode_example(self.task, ex, self.tok, self.meta["max_len"], self.meta["truncation"])
                   for ex in examples[k:k + batch_size]]
            ids, pos, mask = (t.to(self.device) for t in collate(enc, self.tok.pad_id))
            logits, _ = self.model(ids, pos, mask)
            pred, conf = predictions(self.task.kind, logits)
            for p, c in zip(pred.tolist(), conf.tolist()):
                if self.task.kind == "regression":
                    out.append((f"{p:.4f}", 1.0))
                else:
                    names = self.task.label_names
                    out.append((names[int(p)] if names else str(int(p)), float(c)))
        return out


def read_examples(path: Path, pair: bool) -> list[Example]:
    """Examples from a text/TSV/CSV/JSONL file (see the module docstring); errors name the file and line."""
    if not path.is_file():
        raise PredictError(f"--file {path}: no such file")
    if path.suffix.lower() in (".jsonl", ".json"):
        out = []
        for n, rec in json_lines(path):
            if "text" not in rec:
                raise PredictError(f"{path}:{n}: expected a JSON object with \"text\" (and optional \"text_pair\")")
            out.append(Example(rec["text"], rec.get("text_pair")))
        return out
    rows = read_rows(path, "," if path.suffix == ".csv" else "\t")
    ia, ib = 0, 1 if pair else None
    if rows and rows[0][1][0] == "text":
        head = rows.pop(0)[1]
        ib = head.index("text_pair") if "text_pair" in head else None
    out = []
    for n, row in rows:
        if not row[0].strip():
            continue
        if ib is not None and len(row) <= ib:
            raise PredictError(f"{path}:{n}: needs text<TAB>text_pair for a pair task; found {len(row)} column(s)")
        out.append(Example(row[ia], row[ib] if ib is not None else None))
    return out


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gptscale predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a fine-tuned model folder (RUN_DIR/model of a finetune run)")
    p.add_argument("--text", action="append", help="text to label (repeatable)")
    p.add_argument("--text-pair", action="append", help="second text for pair tasks (one per --text)")
    p.add_argument("--choice", action="append", help="an answer for multiple-choice tasks (repeat per choice)")
    p.add_argument("--file", type=Path, help="batch mode: one example per line (see above)")
    p.add_argument("--out", type=Path, help="batch mode: write text<TAB>label<TAB>confidence to this TSV")
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    pred = Predictor(a.model)
    examples = _examples(a, pred)
    lines = [f"{label}\t{conf:.4f}" for label, conf in pred.predict(examples, a.batch_size)]
    if a.out:
        body = ["text\ttext_pair\tlabel\tconfidence"] + [
            f"{ex.text_a}\t{ex.text_b or ''}\t{line}" for ex, line in zip(examples, lines)]
        atomic_write_bytes(a.out, ("\n".join(body) + "\n").encode())
        print(f"{len(lines)} predictions -> {a.out}")
    else:
        print("\n".join(lines))
    return 0


def _examples(a: argparse.Namespace, pred: Predictor) -> list[Example]:
    """The examples of the command line (--text/--text-pair/--choice, or --file), checked against the task."""
    pair = bool(pred.meta.get("pair"))
    if a.file:
        examples = read_examples(a.file, pair)
    elif a.text:
        pairs = a.text_pair or [None] * len(a.text)
        if len(pairs) != len(a.text):
            raise PredictError(f"{len(a.text)} --text but {len(pairs)} --text-pair; give one pair per text")
        examples = [Example(t, b, a.choice) for t, b in zip(a.text, pairs)]
    else:
        raise PredictError("give --text \"...\" (and --text-pair for pair tasks) or --file FILE")
    if pair and any(ex.text_b is None for ex in examples):
        raise PredictError(f"task {pred.task.name} ({pred.task.kind}) takes text pairs: add --text-pair "
                           f"(or a second TSV column)")
    if pred.task.kind == "multiple_choice" and not all(ex.choices for ex in examples):
        raise PredictError(f"task {pred.task.name} is multiple choice: add one --choice per answer")
    return examples


if __name__ == "__main__":
    sys.exit(run_cli("gptscale predict", cli, sys.argv[1:]))
