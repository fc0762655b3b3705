"""Fine-tuning entry point (GPT-1 section 3.2): `main(cfg)` adapts a pre-trained GPT to one task.

    deepspeed gptscale/finetune.py --task rte --init runs/pretrain [--data-dir ../shared/data] [overrides]
    torchrun --nproc_per_node 2 gptscale/finetune.py --task sst2 --init runs/pretrain/hf
    gptscale finetune --task rte --init none

Loss L3 = L2 (task) + finetune.lm_coef * L1 (auxiliary LM on the task inputs). The DeepSpeed engine is
built exactly as for pre-training (gptscale.runtime); the recipe is the `finetune` config section and only
that (GPT-1: lr 6.25e-5, batch 32, 3 epochs, linear warm-up over 0.2% of training then linear decay, clip 1,
weight decay 0.01, classifier dropout 0.1): a train.* recipe key is an error naming the finetune.* key to
use. Each epoch is evaluated on the dev split; RUN_DIR/metrics.json holds every epoch's metrics (primary
first) and the best, RUN_DIR/predictions_dev.tsv the best epoch's predictions, RUN_DIR/model the best
epoch's model folder (gptscale.tasks.outputs, gptscale.tasks.predict).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptscale.config import (
    ConfigError,
    FinetuneConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    field_docs,
    load_config_and_keys,
)
from gptscale.config_types import flag_value
from gptscale.errors import GptscaleError
from gptscale.runtime.dist import device
from gptscale.runtime.engine import build_engine, evaluating, full_state_dict
from gptscale.runtime.monitor import Progress
from gptscale.runtime.run import Run, run_entry_point, start_run
from gptscale.tasks import Example, Task, collate, compute_metrics, encode_example, outputs
from gptscale.tasks.heads import TaskModel, load_init, predictions, reinit_after, task_loss
from gptscale.tasks.predict import save_task_model
from gptscale.tasks.registry import task_for
from gptscale.tokenizer import Tokenizer

MODEL_DIR = "model"
"""The best epoch's fine-tuned model folder inside the run folder."""


class FinetuneError(GptscaleError, RuntimeError):
    """A fine-tuning run that cannot start; the message says why and what to pass."""


# ------------------------------------------------------------------------------------------- inputs


@dataclass
class Split:
    """Examples of one split and their token sequences."""

    name: str
    examples: list[Example]
    encoded: list[list[list[int]]]


CUSTOM_KEYS = {"text_col": "text_col", "text_pair_col": "text_pair_col", "label_col": "label_col",
               "task_kind": "kind", "label_names": "label_names"}
"""finetune.* keys of the custom task -> custom_task() keyword arguments."""


def custom_options(ft: FinetuneConfig) -> dict[str, Any]:
    """custom_task() keyword arguments from the custom-task keys set away from their defaults."""
    default = FinetuneConfig()
    out = {arg: getattr(ft, key) for key, arg in CUSTOM_KEYS.items() if getattr(ft, key) != getattr(default, key)}
    if "label_names" in out:
        out["label_names"] = [x.strip() for x in out["label_names"].split(",") if x.strip()]
    return out


def load_splits(ft: FinetuneConfig) -> tuple[Task, Path, list[Example], list[Example], tuple[str, str]]:
    """(task, its data folder, train examples, dev examples, (train split, dev split)) with the few-shot
    subset (train_samples) and eval_samples applied."""
    task, data_dir = task_for(ft.task, ft.data_dir or "../shared/data", **custom_options(ft))
    train_ex, dev_ex, names = task.fit_splits(data_dir, ft.train_split, ft.dev_split)
    if ft.train_samples is not None:
        keep = torch.randperm(len(train_ex), generator=torch.Generator().manual_seed(ft.seed))[: ft.train_samples]
        train_ex = [train_ex[i] for i in sorted(keep.tolist())]
    if ft.eval_samples is not None:
        dev_ex = dev_ex[: ft.eval_samples]
    return task, data_dir, train_ex, dev_ex, names


def recipe(cfg: RunConfig, world: int, steps: int) -> TrainConfig:
    """The engine's TrainConfig from the finetune section (the run-wide train.* keys kept)."""
    ft = cfg.finetune
    if ft.batch_size % (ft.micro_batch_size * world):
        raise FinetuneError(f"finetune.batch_size={ft.batch_size} is not a multiple of finetune.micro_batch_size="
                            f"{ft.micro_batch_size} x world size {world}")
    return dataclasses.replace(
        cfg.train, lr=ft.lr, micro_batch_size=ft.micro_batch_size, seed=ft.seed,
        grad_accum_steps=ft.batch_size // (ft.micro_batch_size * world), global_batch_size=ft.batch_size,
        warmup_steps=max(1, math.ceil(ft.warmup_fraction * steps)), lr_schedule="linear", min_lr=0.0,
        max_steps=steps, weight_decay=ft.weight_decay, grad_clip=ft.grad_clip)


# --------------------------------------------------------------------------------------------- loop


def batches(n: int, batch: int, rank: int, world: int, seed: int, epoch: int, shuffle: bool):
    """Index lists for this rank: a seeded permutation per epoch, split into global batches; each rank
    takes its contiguous slice. Training drops the last partial global batch; eval pads with -1."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist() if shuffle \
        else list(range(n))
    gb = batch * world
    if shuffle:
        order = order[: n - n % gb]
    else:
        order += [-1] * (-n % gb)
    for k in range(0, len(order), gb):
        yield order[k + rank * batch: k + (rank + 1) * batch]


def to_device(seqs, pad_id):
    ids, pos, mask = collate(seqs, pad_id)
    return ids.to(device()), pos.to(device()), mask.to(device())


def predict_split(engine, task: Task, encoded, pad_id: int, micro: int, rank: int, world: int) -> tuple[list, list]:
    """(predictions, confidences) for every example, all ranks taking part (ZeRO-3 needs each forward)."""
    local: list[tuple[int, float, float]] = []
    with evaluating(engine):
        for idx in batches(len(encoded), micro, rank, world, 0, 0, shuffle=False):
            seqs = [encoded[i if i >= 0 else 0] for i in idx]  # padding slots repeat example 0, dropped below
            logits, _ = engine(*to_device(seqs, pad_id))
            pred, conf = predictions(task.kind, logits)
            local += [(i, float(pred[j]), float(conf[j])) for j, i in enumerate(idx) if i >= 0]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, local)
    rows = sorted(r for part in gathered for r in part)
    cast = float if task.kind == "regression" else int
    return [cast(r[1]) for r in rows], [r[2] for r in rows]


@dataclass
class Fit:
    """One fine-tuning run in progress."""

    cfg: RunConfig
    run: Run
    engine: Any
    task: Task
    tok: Tokenizer
    model_cfg: ModelConfig
    train: Split
    dev: Split
    extra: list[Split]
    names: tuple[str, str]
    total: int

    def predict(self, split: Split) -> tuple[list, list]:
        return predict_split(self.engine, self.task, split.encoded, self.tok.pad_id,
                             self.cfg.finetune.micro_batch_size, self.run.rank, self.run.world)


def main(cfg: RunConfig) -> dict[str, Any]:
    """Fine-tune per cfg.finetune; returns the best epoch's dev metrics."""
    ft = cfg.finetune
    task, data_dir, train_ex, dev_ex, names = load_splits(ft)
    extra_ex = outputs.extra_splits(task, data_dir, names)  # every task file read and checked before any model
    torch.manual_seed(ft.seed)
    gpt, tok = load_init(cfg)
    if ft.transfer_layers is not None:
        reinit_after(gpt, ft.transfer_layers)
    if tok.vocab_size > gpt.cfg.vocab_size:
        raise FinetuneError(f"tokenizer vocab {tok.vocab_size} > model vocab {gpt.cfg.vocab_size}")
    model = TaskModel(gpt, task.kind, task.num_labels, ft.clf_dropout)

    def split(name: str, examples: list[Example]) -> Split:
        return Split(name, examples, [encode_example(task, ex, tok, gpt.cfg.n_ctx) for ex in examples])

    train, dev = split(names[0], train_ex), split(names[1], dev_ex)
    extra = [split(k, v[: ft.eval_samples]) for k, v in extra_ex.items()]
    steps_per_epoch = len(train.examples) // ft.batch_size
    if steps_per_epoch == 0:
        raise FinetuneError(f"{len(train.examples)} training examples make no batch of finetune.batch_size="
                            f"{ft.batch_size}")
    run = start_run(cfg)
    try:
        total = steps_per_epoch * ft.epochs
        engine = build_engine(model, recipe(cfg, run.world, total), run.world, total)
        run.monitor.log(f"gptscale finetune {task.name}: {len(train_ex)} train ({names[0]}) / {len(dev_ex)} dev "
                        f"({names[1]}) examples, {ft.epochs} epochs x {steps_per_epoch} steps of {ft.batch_size}, "
                        f"lm_coef {ft.lm_coef}, init {ft.init or 'none'}")
        return fit(Fit(cfg, run, engine, task, tok, gpt.cfg, train, dev, extra, names, total))
    finally:
        run.close()


def fit(f: Fit) -> dict[str, Any]:
    """Every epoch: train, score dev; at a new best epoch score the other splits and save the model folder."""
    ft, mon, primary = f.cfg.finetune, f.run.monitor, f.task.metrics[0]
    labels = torch.tensor([ex.label for ex in f.train.examples])
    progress, history, best, results = Progress(f.total), [], None, {}
    f.engine.train()  # a checkpoint init comes back in eval mode: dropout must be on from the first step
    for epoch in range(1, ft.epochs + 1):
        train_epoch(f, epoch, labels, progress)
        preds, confs = f.predict(f.dev)
        metrics = compute_metrics(f.task, preds, f.dev.examples)
        history.append({"epoch": epoch, **metrics})
        mon.log(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        mon.scalars(epoch, {f"dev/{k}": v for k, v in metrics.items()})
        if best is None or metrics[primary] > best[primary]:
            best, results = {"epoch": epoch, **metrics}, {"dev": metrics, **score_splits(f, epoch)}
            save_best(f, epoch, metrics, preds, confs)
        if f.run.rank == 0:
            outputs.write_metrics(f.run.run_dir, {
                "task": f.task.name, "primary": primary, "best": best, "splits": results, "epochs": history,
                "train_split": f.names[0], "dev_split": f.names[1], "model": str(f.run.run_dir / MODEL_DIR)})
    model_dir = f.run.run_dir / MODEL_DIR
    mon.log(f"best epoch {best['epoch']}: {primary} {best[primary]:.4f}; model folder {model_dir} "
            f"(gptscale predict --model {model_dir} --text ...)")
    return best


def train_epoch(f: Fit, epoch: int, labels: torch.Tensor, progress: Progress) -> None:
    """One pass over the training split; a log line and scalars every train.log_interval optimizer steps."""
    ft, engine = f.cfg.finetune, f.engine
    last_gs = engine.global_steps
    for idx in batches(len(f.train.encoded), ft.micro_batch_size, f.run.rank, f.run.world, ft.seed, epoch - 1,
                       shuffle=True):
        logits, lm_loss = engine(*to_device([f.train.encoded[i] for i in idx], f.tok.pad_id))
        loss = task_loss(f.task.kind, logits, labels[idx].to(logits.device))
        engine.backward(loss + ft.lm_coef * lm_loss if ft.lm_coef > 0 else loss)
        engine.step()
        gs = engine.global_steps
        if gs != last_gs and gs % f.cfg.train.log_interval == 0:
            f.run.monitor.scalars(gs, {"finetune/task_loss": loss.item(), "finetune/lm_loss": lm_loss.item()})
            f.run.monitor.log(f"epoch {epoch} step {gs}/{f.total} | task loss {loss.item():.4f} | lm loss "
                              f"{lm_loss.item():.4f} | lr {engine.get_lr()[0]:.2e} | "
                              f"{progress.rate(gs) * ft.batch_size:.1f} ex/s | eta {progress.eta(gs)}")
        last_gs = gs


def save_best(f: Fit, epoch: int, metrics: dict[str, float], preds: list, confs: list) -> None:
    """The new best epoch's predictions and model folder (rank 0; gathering the weights is a collective)."""
    state = full_state_dict(f.engine)  # a collective under ZeRO-3
    if f.run.rank == 0:
        outputs.write_predictions(f.run.run_dir / outputs.PREDICTIONS_FILE, f.task, f.dev.examples, preds, confs)
        save_task_model(f.run.run_dir / MODEL_DIR, state, f.model_cfg, f.task, f.tok, {
            "epoch": epoch, "dev": metrics, "init": f.cfg.finetune.init or "none", "tokenizer_hash": f.tok.hash,
            "pair": f.train.examples[0].text_b is not None})


def score_splits(f: Fit, epoch: int) -> dict[str, Any]:
    """Metrics of the labelled extra splits; GLUE-submission TSVs (RUN_DIR/submission/) for unlabelled ones."""
    out: dict[str, Any] = {}
    for split in f.extra:
        preds, _ = f.predict(split)
        if all(ex.label is not None for ex in split.examples):
            out[split.name] = compute_metrics(f.task, preds, split.examples)
            f.run.monitor.log(f"  {split.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[split.name].items()))
            f.run.monitor.scalars(epoch, {f"{split.name}/{k}": v for k, v in out[split.name].items()})
        elif f.run.rank == 0:
            path = outputs.submission_path(f.run.run_dir, f.task, split.name)
            outputs.write_submission(path, f.task, split.examples, preds)
            out[split.name] = {"submission": str(path), "examples": len(split.examples)}
    return out


# ---------------------------------------------------------------------------------------------- CLI


def default_run_dir(task: str) -> str:
    """Where a fine-tuning run goes when train.run_dir is left at its default: one folder per task."""
    return f"runs/finetune/{task}"


SHORT_FLAGS: dict[str, str] = {
    "--task": "task", "--init": "init", "--data-dir": "data_dir", "--lm-coef": "lm_coef",
    "--train-samples": "train_samples", "--transfer-layers": "transfer_layers", "--lr": "lr",
    "--epochs": "epochs", "--batch-size": "batch_size", "--seed": "seed",
    "--text-col": "text_col", "--text-pair-col": "text_pair_col", "--label-col": "label_col",
}
"""finetune.py's own flags: shorthands for the most used finetune.* keys (`--finetune.KEY=V` sets any key)."""

TRAIN_KEYS_NOT_READ: dict[str, str] = {
    "lr": "finetune.lr", "micro_batch_size": "finetune.micro_batch_size", "seed": "finetune.seed",
    "init": "finetune.init (--init)",
    "weight_decay": "finetune.weight_decay", "grad_clip": "finetune.grad_clip",
    "warmup_steps": "finetune.warmup_fraction", "max_steps": "finetune.epochs", "max_tokens": "finetune.epochs",
    "grad_accum_steps": "finetune.batch_size (accumulation is batch_size / (micro_batch_size x ranks))",
    "global_batch_size": "finetune.batch_size", "lr_schedule": "nothing: fine-tuning decays linearly (GPT-1)",
    "min_lr": "nothing: fine-tuning decays to 0", "eval_interval": "nothing: dev is scored after every epoch",
    "eval_steps": "finetune.eval_samples", "checkpoint_interval": "nothing: the best epoch's model folder is kept",
    "keep_last": "nothing: the best epoch's model folder is kept", "max_bad_steps": "nothing",
    "peak_tflops": "nothing", "allow_step_back": "nothing: fine-tuning does not resume",
}
"""train.* keys fine-tuning does not read -> what to set instead (giving one is an error, not a silent no-op)."""


def expand_flags(argv: list[str]) -> list[str]:
    """Rewrite each SHORT_FLAGS flag in place as its --finetune.KEY=VALUE override (the last one given wins)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i].partition("=")[0] in SHORT_FLAGS:
            name, value, i = flag_value(argv, i)
            out.append(f"--finetune.{SHORT_FLAGS[name]}={value}")
        else:
            out.append(argv[i])
        i += 1
    return out


def resolve(argv: list[str]) -> RunConfig:
    """The RunConfig of a fine-tuning command line: defaults < --config file < flags, in the order given;
    train.run_dir left at its default becomes runs/finetune/TASK. Unknown flags, and train.* keys that
    fine-tuning does not read, are errors."""
    argv = expand_flags(argv)
    cfg, rest, given = load_config_and_keys(argv)
    for key in sorted(k for k in given if k.startswith("train.") and k.partition(".")[2] in TRAIN_KEYS_NOT_READ):
        raise ConfigError(f"{key}: fine-tuning does not read it (its recipe is the finetune section); set "
                          f"{TRAIN_KEYS_NOT_READ[key.partition('.')[2]]}")
    docs = field_docs(FinetuneConfig)
    p = argparse.ArgumentParser(prog="gptscale finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any key: --finetune.KEY=V, --train.KEY=V, --model.KEY=V, --data.KEY=V "
                                       "(gptscale config --keys lists them); --config FILE for a YAML/JSON file.")
    for flag, key in SHORT_FLAGS.items():
        p.add_argument(flag, metavar=key.upper(), help=f"finetune.{key}: {docs[key]}")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    p.parse_args(rest)  # --help, and unknown flags are errors; SHORT_FLAGS are already in cfg
    if cfg.train.run_dir == TrainConfig.run_dir:  # default run dir: one per task
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=default_run_dir(cfg.finetune.task)))
    return cfg


def cli(argv: list[str]) -> int:
    return run_entry_point("gptscale finetune", lambda: main(resolve(argv)))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
