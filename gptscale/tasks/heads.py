"""GPT-1 task heads (paper section 3.2-3.3) on the final hidden state at the extract token.

    model = TaskModel(gpt, kind="entailment", num_labels=2, clf_dropout=0.1)
    logits, lm_loss = model(ids, extract_pos, lm_mask)    # ids: (B, S, T), S sequences per example

S is 1 for classification/entailment/regression, 2 for similarity (both orderings; their extract states
are added before the linear layer), k for multiple choice (one score per choice, softmax over choices).
lm_loss is the auxiliary language-modelling loss L1 over real tokens (padding masked out).

The GPT under the head comes from `load_init` (finetune.init: a pre-training run or checkpoint, an export or
HF folder, or none), with GPT-1's task tokens added to a foreign vocabulary (`new_rows`) and optionally only
the first k blocks kept (`reinit_after`, paper Fig. 2 left).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptscale.config import RunConfig
from gptscale.init_source import InitError, check_tokenizer, open_source
from gptscale.model import GPT
from gptscale.tokenizer import Tokenizer


class TaskModel(nn.Module):
    def __init__(self, gpt: GPT, kind: str, num_labels: int, clf_dropout: float = 0.1):
        super().__init__()
        self.gpt, self.kind = gpt, kind
        self.dropout = nn.Dropout(clf_dropout)
        out = 1 if kind in ("multiple_choice", "regression") else num_labels
        self.head = nn.Linear(gpt.cfg.d_model, out)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, extract_pos: torch.Tensor, lm_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, T = ids.shape
        flat = ids.reshape(B * S, T)
        h = self.gpt.hidden(flat)  # (B*S, T, C)
        # auxiliary LM loss: predict token t+1 from t wherever t+1 is a real token
        targets = flat[:, 1:].masked_fill(~lm_mask.reshape(B * S, T)[:, 1:], -100)  # (B*S, T-1)
        lm_logits = self.gpt.lm_head(h[:, :-1])  # (B*S, T-1, V)
        lm_loss = F.cross_entropy(lm_logits.reshape(-1, lm_logits.size(-1)).float(), targets.reshape(-1),
                                  ignore_index=-100)
        hx = h[torch.arange(B * S, device=h.device), extract_pos.reshape(-1)].view(B, S, -1)  # (B, S, C)
        if self.kind == "multiple_choice":
            logits = self.head(self.dropout(hx)).squeeze(-1)  # (B, S): one score per choice
        else:
            pooled = hx.sum(dim=1)  # (B, C): similarity adds both orderings; S == 1 otherwise
            logits = self.head(self.dropout(pooled))  # (B, num_labels) or (B, 1)
            if self.kind == "regression":
                logits = logits.squeeze(-1)  # (B,)
        return logits, lm_loss


def task_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L2 of the paper: cross-entropy over labels or choices; mean squared error for regression."""
    if kind == "regression":
        return F.mse_loss(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def predictions(kind: str, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, confidence) per example: argmax + softmax probability, or the regression value."""
    if kind == "regression":
        return logits.float(), torch.ones_like(logits, dtype=torch.float)
    probs = logits.float().softmax(-1)
    conf, pred = probs.max(-1)
    return pred, conf


# ------------------------------------------------------------------------------------ initialisation


def load_init(cfg: RunConfig) -> tuple[GPT, Any]:
    """(pre-trained GPT, tokenizer) from finetune.init: a run/checkpoint, an export or HF folder, a Hub id, or
    'none' (gptscale.init_source finds and checks it). A foreign vocabulary without GPT-1's task tokens (e.g.
    GPT-2's) gets them as new ids, N(0, 0.02) rows."""
    init = cfg.finetune.init
    if init in ("", "none"):
        if not cfg.data.tokenizer:
            raise InitError("--init none needs a tokenizer: pass --data.tokenizer=<tokenizer folder>")
        tok = Tokenizer.load(cfg.data.tokenizer)
        return GPT(dataclasses.replace(cfg.model, vocab_size=max(cfg.model.vocab_size, tok.vocab_size))), tok
    source = open_source(init, "finetune.init")
    tok_dir = cfg.data.tokenizer or source.tokenizer
    if not tok_dir:
        raise InitError(f"{init}: the checkpoint records no tokenizer; pass --data.tokenizer=<folder>")
    tok = Tokenizer.load(tok_dir)
    check_tokenizer(source, tok.hashes, f"tokenizer {tok.path} (sha256 {tok.hash[:12]}...)",
                    "Pass --data.tokenizer=<the pre-training tokenizer folder>")
    model = source.load(verify=cfg.train.verify_checkpoint)
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
