"""Fine-tuning entry point (GPT-1 section 3.2): `main(cfg)` adapts a pre-trained GPT to one task.

    deepspeed gptscale/finetune.py --task rte --init runs/pretrain [--data-dir ../shared/data] [overrides]
    torchrun --nproc_per_node 2 gptscale/finetune.py --task sst2 --init runs/pretrain/hf
    gptscale finetune --task rte --init none

Loss L3 = L2 (task) + finetune.lm_coef * L1 (auxiliary LM on the task inputs). The DeepSpeed engine is
built exactly as for pre-training (gptscale.runtime.engine); the recipe comes from the `finetune` config section
(GPT-1: lr 6.25e-5, batch 32, 3 epochs, linear warm-up over 0.2% of training then linear decay, clip 1,
classifier dropout 0.1). Each epoch is evaluated on the dev split; RUN_DIR/metrics.json holds every
epoch's metrics (primary first) and the best, RUN_DIR/predictions_dev.tsv the best epoch's predictions.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptscale.config import ConfigError, FinetuneConfig, RunConfig, TrainConfig, dump_yaml, field_docs, load_config
from gptscale.files import atomic_write_bytes
from gptscale.model import GPT
from gptscale.runtime.dist import device, init_distributed, shutdown
from gptscale.runtime.engine import build_engine, full_state_dict
from gptscale.runtime.monitor import Monitor
from gptscale.tasks import TaskDataError, collate, compute_metrics, encode_example, outputs
from gptscale.tasks.heads import TaskModel, predictions, task_loss
from gptscale.tasks.predict import save_task_model
from gptscale.tasks.registry import task_for


class FinetuneError(RuntimeError):
    """A fine-tuning run that cannot start; the message says why and what to pass."""


def load_init(cfg: RunConfig) -> tuple[GPT, Any]:
    """(pre-trained GPT, tokenizer) from finetune.init: a run/checkpoint, an export or HF folder, or 'none'.
    A foreign vocabulary without GPT-1's task tokens (e.g. GPT-2's) gets them as new ids, N(0, 0.02) rows."""
    from gptscale.tokenizer import Tokenizer

    init = cfg.finetune.init
    if init in ("", "none"):
        if not cfg.data.tokenizer:
            raise FinetuneError("--init none needs a tokenizer: pass --data.tokenizer=<tokenizer folder>")
        tok = Tokenizer.load(cfg.data.tokenizer)
        return GPT(dataclasses.replace(cfg.model, vocab_size=max(cfg.model.vocab_size, tok.vocab_size))), tok
    p = Path(init)
    if (p / "config.json").is_file():  # an export or any compatible HF folder
        from gptscale.hf.convert import load_hf

        model, tok = load_hf(p), Tokenizer.load(cfg.data.tokenizer or p)
    else:
        from gptscale.hf.export import load_trained_model

        model, meta = load_trained_model(p)
        tok_dir = cfg.data.tokenizer or meta.get("tokenizer")
        if not tok_dir:
            raise FinetuneError(f"{init}: the checkpoint records no tokenizer; pass --data.tokenizer=<folder>")
        tok = Tokenizer.load(tok_dir)
    missing = tok.missing_task_specials()
    if missing:
        tok = tok.with_task_specials()
        new_rows(model, [getattr(tok, f"{name}_id") for name in missing], tok.vocab_size)
    return model, tok


def new_rows(gpt: GPT, ids: list[int], vocab: int, std: float = 0.02) -> None:
    """Give token ids new embedding rows ~ N(0, std) (the paper's added delimiter tokens), growing the
    vocabulary to `vocab` when they lie past its end; a tied LM head follows the embedding."""
    C, V = gpt.cfg.d_model, gpt.cfg.vocab_size
    with torch.no_grad():
        if vocab > V:
            wte = torch.nn.Embedding(vocab, C)
            wte.weight[:V] = gpt.wte.weight
            gpt.wte = wte
            head = torch.nn.Linear(C, vocab, bias=False)
            if gpt.cfg.tie_embeddings:
                head.weight = gpt.wte.weight
            else:
                head.weight[:V] = gpt.lm_head.weight
                head.weight[V:].normal_(0.0, std)
            gpt.lm_head = head
            gpt.cfg = dataclasses.replace(gpt.cfg, vocab_size=vocab)
        for i in ids:
            gpt.wte.weight[i].normal_(0.0, std)


def reinit_after(model: GPT, k: int) -> None:
    """Keep only the first k pre-trained blocks (paper Fig. 2 left); later blocks start from init."""
    fresh = GPT(model.cfg)
    for i in range(k, model.cfg.n_layer):
        model.h[i].load_state_dict(fresh.h[i].state_dict())


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


def encode_split(task, examples, tok, max_len: int) -> list[list[list[int]]]:
    return [encode_example(task, ex, tok, max_len) for ex in examples]


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


@torch.no_grad()
def evaluate(engine, task, encoded, tok, cfg: RunConfig, rank: int, world: int) -> tuple[list, list]:
    """(predictions, confidences) for every example, all ranks taking part (ZeRO-3 needs each forward)."""
    engine.eval()
    local: list[tuple[int, float, float]] = []
    for idx in batches(len(encoded), cfg.finetune.micro_batch_size, rank, world, 0, 0, shuffle=False):
        real = [i for i in idx if i >= 0]
        seqs = [encoded[i if i >= 0 else 0] for i in idx]  # padding slots repeat example 0, dropped below
        logits, _ = engine(*to_device(seqs, tok.pad_id))
        pred, conf = predictions(task.kind, logits)
        local += [(i, float(pred[j]), float(conf[j])) for j, i in enumerate(idx) if i >= 0][: len(real)]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, local)
    engine.train()
    rows = sorted(r for part in gathered for r in part)
    cast = float if task.kind == "regression" else int
    return [cast(r[1]) for r in rows], [r[2] for r in rows]


def train_config(cfg: RunConfig, world: int, steps: int) -> TrainConfig:
    ft = cfg.finetune
    if ft.batch_size % (ft.micro_batch_size * world):
        raise FinetuneError(f"finetune.batch_size={ft.batch_size} is not a multiple of finetune.micro_batch_size="
                            f"{ft.micro_batch_size} x world size {world}")
    return dataclasses.replace(
        cfg.train, lr=ft.lr, micro_batch_size=ft.micro_batch_size,
        grad_accum_steps=ft.batch_size // (ft.micro_batch_size * world), global_batch_size=ft.batch_size,
        warmup_steps=max(1, math.ceil(ft.warmup_fraction * steps)), lr_schedule="linear", min_lr=0.0,
        weight_decay=0.01, grad_clip=1.0)


def main(cfg: RunConfig) -> dict[str, Any]:
    """Fine-tune per cfg.finetune; returns the best epoch's dev metrics."""
    rank, world, _ = init_distributed()
    ft = cfg.finetune
    task, data_dir = task_for(ft.task, ft.data_dir or "../shared/data", **custom_options(ft))
    run_dir = Path(cfg.train.run_dir)
    train_ex, dev_ex, (train_split, dev_split) = task.fit_splits(data_dir, ft.train_split, ft.dev_split)
    if ft.train_samples is not None:
        keep = torch.randperm(len(train_ex), generator=torch.Generator().manual_seed(ft.seed))[: ft.train_samples]
        train_ex = [train_ex[i] for i in sorted(keep.tolist())]
    if ft.eval_samples is not None:
        dev_ex = dev_ex[: ft.eval_samples]
    torch.manual_seed(ft.seed)
    gpt, tok = load_init(cfg)
    if ft.transfer_layers is not None:
        reinit_after(gpt, ft.transfer_layers)
    if tok.vocab_size > gpt.cfg.vocab_size:
        raise FinetuneError(f"tokenizer vocab {tok.vocab_size} > model vocab {gpt.cfg.vocab_size}")
    model = TaskModel(gpt, task.kind, task.num_labels, ft.clf_dropout)
    max_len = gpt.cfg.n_ctx
    train_enc, dev_enc = encode_split(task, train_ex, tok, max_len), encode_split(task, dev_ex, tok, max_len)
    extra = {k: (v[: ft.eval_samples], encode_split(task, v[: ft.eval_samples], tok, max_len))
             for k, v in outputs.extra_splits(task, data_dir, (train_split, dev_split)).items()}
    pair = train_ex[0].text_b is not None
    results: dict[str, Any] = {}
    steps_per_epoch = len(train_enc) // ft.batch_size
    if steps_per_epoch == 0:
        raise FinetuneError(f"{len(train_enc)} training examples make no batch of finetune.batch_size={ft.batch_size}")
    total = steps_per_epoch * ft.epochs
    tcfg = train_config(cfg, world, total)
    engine = build_engine(model, tcfg, world, total)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())
    mon = Monitor(run_dir, rank, total)
    mon.log(f"gptscale finetune {task.name}: {len(train_ex)} train ({train_split}) / {len(dev_ex)} dev ({dev_split}) "
            f"examples, {ft.epochs} epochs "
            f"x {steps_per_epoch} steps of {ft.batch_size}, lm_coef {ft.lm_coef}, init {ft.init or 'none'}")
    labels = torch.tensor([ex.label for ex in train_ex])
    engine.train()  # a checkpoint init comes back in eval mode: dropout must be on from the first step
    history, best, t0, last_gs = [], None, time.perf_counter(), 0
    for epoch in range(ft.epochs):
        for idx in batches(len(train_enc), ft.micro_batch_size, rank, world, ft.seed, epoch, shuffle=True):
            logits, lm_loss = engine(*to_device([train_enc[i] for i in idx], tok.pad_id))
            loss = task_loss(task.kind, logits, labels[idx].to(logits.device))
            total_loss = loss + ft.lm_coef * lm_loss if ft.lm_coef > 0 else loss
            engine.backward(total_loss)
            engine.step()
            gs = engine.global_steps
            if rank == 0 and gs != last_gs and gs % cfg.train.log_interval == 0:
                mon.tb.add_scalar("finetune/task_loss", loss.item(), gs)
                mon.tb.add_scalar("finetune/lm_loss", lm_loss.item(), gs)
                rate = gs * ft.batch_size / max(time.perf_counter() - t0, 1e-9)
                mon.log(f"epoch {epoch + 1} step {gs}/{total} | task loss {loss.item():.4f} | lm loss "
                        f"{lm_loss.item():.4f} | lr {engine.get_lr()[0]:.2e} | {rate:.1f} ex/s | eta "
                        f"{(total - gs) * ft.batch_size / max(rate, 1e-9):.0f}s")
            last_gs = gs
        preds, confs = evaluate(engine, task, dev_enc, tok, cfg, rank, world)
        metrics = compute_metrics(task, preds, dev_ex)
        history.append({"epoch": epoch + 1, **metrics})
        primary = task.metrics[0]
        mon.log(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if rank == 0:
            for k, v in metrics.items():
                mon.tb.add_scalar(f"dev/{k}", v, epoch + 1)
        if best is None or metrics[primary] > best[primary]:
            best = {"epoch": epoch + 1, **metrics}
            results = {"dev": metrics}
            results.update(score_splits(engine, task, extra, tok, cfg, rank, world, run_dir, epoch + 1, mon))
            state = full_state_dict(engine)  # a collective under ZeRO-3
            if rank == 0:
                outputs.write_predictions(run_dir / outputs.PREDICTIONS_FILE, task, dev_ex, preds, confs)
                save_task_model(run_dir / "model", state, gpt.cfg, task, tok, {
                    "epoch": epoch + 1, "dev": metrics, "init": ft.init or "none", "pair": pair})
        if rank == 0:
            outputs.write_metrics(run_dir, {"task": task.name, "primary": primary, "best": best, "splits": results,
                                            "epochs": history, "train_split": train_split, "dev_split": dev_split,
                                            "model": str(run_dir / "model")})
    mon.log(f"best epoch {best['epoch']}: {primary} {best[primary]:.4f}; model folder {run_dir / 'model'} "
            f"(gptscale predict --model {run_dir / 'model'} --text ...)")
    mon.close()
    return best or {}


def score_splits(engine, task, extra: dict, tok, cfg: RunConfig, rank: int, world: int, run_dir: Path,
                 epoch: int, mon) -> dict[str, Any]:
    """Metrics of the labelled extra splits; GLUE-submission TSVs (RUN_DIR/submission/) for unlabelled ones."""
    out: dict[str, Any] = {}
    for split, (examples, encoded) in extra.items():
        preds, _ = evaluate(engine, task, encoded, tok, cfg, rank, world)
        if all(ex.label is not None for ex in examples):
            out[split] = compute_metrics(task, preds, examples)
            mon.log(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[split].items()))
            if rank == 0:
                for k, v in out[split].items():
                    mon.tb.add_scalar(f"{split}/{k}", v, epoch)
        elif rank == 0:
            path = outputs.submission_path(run_dir, task, split)
            outputs.write_submission(path, task, examples, preds)
            out[split] = {"submission": str(path), "examples": len(examples)}
    return out


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


def expand_flags(argv: list[str]) -> list[str]:
    """Rewrite each SHORT_FLAGS flag in place as its --finetune.KEY=VALUE override (the last one given wins)."""
    out, i = [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in SHORT_FLAGS:
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ConfigError(f"{name} needs a value: {name}=VALUE")
                i += 1
                value = argv[i]
            out.append(f"--finetune.{SHORT_FLAGS[name]}={value}")
        else:
            out.append(argv[i])
        i += 1
    return out


def resolve(argv: list[str]) -> RunConfig:
    """The RunConfig of a fine-tuning command line: defaults < --config file < flags, in the order given;
    train.run_dir left at its default becomes runs/finetune/TASK. Unknown flags are errors."""
    cfg, rest = load_config(expand_flags(argv))
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
    try:
        cfg = resolve(argv)
        main(cfg)
    except (FinetuneError, TaskDataError, FileNotFoundError, ValueError) as e:
        print(f"gptscale finetune: error: {e}", file=sys.stderr, flush=True)
        return 2
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
