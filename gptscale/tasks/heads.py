"""GPT-1 task heads (paper section 3.2-3.3) on the final hidden state at the extract token.

    model = TaskModel(gpt, kind="entailment", num_labels=2, clf_dropout=0.1)
    logits, lm_loss = model(ids, extract_pos, lm_mask)    # ids: (B, S, T), S sequences per example

S is 1 for classification/entailment/regression, 2 for similarity (both orderings; their extract states
are added before the linear layer), k for multiple choice (one score per choice, softmax over choices).
lm_loss is the auxiliary language-modelling loss L1 over real tokens (padding masked out).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptscale.model import GPT


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
