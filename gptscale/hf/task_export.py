"""Fine-tuned task folders as native Hugging Face models (what ``finetune`` writes to RUN_DIR/model).

    from transformers import AutoTokenizer, AutoModelForSequenceClassification, pipeline
    tok = AutoTokenizer.from_pretrained(folder)        # adds GPT-1's task tokens itself
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    pipeline("text-classification", model=folder, truncation=True)(["A gripping film.", ...], batch_size=8)

**Which model each task kind is** (``config.json``'s ``architectures``; GPT-2 family for pre-LN models,
OpenAI-GPT for post-LN ones):

- classification, entailment, regression and similarity: ``GPT2ForSequenceClassification`` /
  ``OpenAIGPTForSequenceClassification``, pooled at the rightmost non-pad token (the extract token), with
  ``id2label``/``label2id`` from the task's label names, ``pad_token_id``, and ``problem_type``
  (``"regression"`` for STS-B-like tasks). HF's ``score`` layer has no bias, so gptscale's head bias ``b`` is
  folded into the shift of the last LayerNorm, which in a classifier feeds nothing but ``score``:
  ``beta' = beta + pinv(W) b`` gives ``W (n * gamma + beta') = W h + b`` exactly (W: labels x d, full row
  rank; ``config.gptscale.head_bias_residual`` records the float64 residual). Similarity tasks (both orderings,
  extract states summed, then the head) fold ``b / 2``, so **the sum of the logits of the two orderings**
  ``model(A, B).logits + model(B, A).logits`` is gptscale's logit; softmax of it is its confidence.
- multiple choice: ``GPT2DoubleHeadsModel`` / ``OpenAIGPTDoubleHeadsModel``: its ``multiple_choice_head``
  (``Linear(d, 1)`` with bias, ``summary_type="cls_index"``) is gptscale's head as it is, pooled at
  ``mc_token_ids`` = each choice's extract position; inputs ``(batch, n_choices, seq)``.

Because the folded shift changes what a language-model head on the same weights would see, a classifier
folder keeps the fine-tuned body unfolded as a causal LM in ``lm/`` (``AutoModelForCausalLM.from_pretrained(
folder + "/lm")``, with a plain tokenizer). A multiple-choice folder needs no folding: its own body is exact
for ``AutoModelForCausalLM``.

**Tokenizer**: ``tokenizer.json``'s post-processor is GPT-1's input transformation
(``<|start|> $A <|extract|>`` and ``<|start|> $A <|delim|> $B <|extract|>``), added whenever
``add_special_tokens=True`` (the default, and what ``pipeline`` uses); ``model_max_length`` is the context.
With ``truncation=True`` (HF's ``longest_first``) a single text keeps its first ``n_ctx - 2`` tokens and a pair
is cut exactly like gptscale's ``"share"`` rule (the shorter segment keeps ``min(len, budget // 2)``, the longer
the rest of ``n_ctx - 3``). A task fine-tuned with the default ``"halves"`` rule (each segment at most
``n_ctx // 2 - 2``) differs from HF only on pairs longer than that; ``config.gptscale.truncation`` says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gptscale.hf.convert import LM_DIR, hf_config, hf_family, to_hf_state_dict, write_hf
from gptscale.model import GPT
from gptscale.tasks.base import Task
from gptscale.tokenizer import Tokenizer
from gptscale.tokenizer_hf import save_hf

HF_CLASSES = {
    ("openai-gpt", False): "OpenAIGPTForSequenceClassification", ("gpt2", False): "GPT2ForSequenceClassification",
    ("openai-gpt", True): "OpenAIGPTDoubleHeadsModel", ("gpt2", True): "GPT2DoubleHeadsModel",
}
"""(HF family, multiple choice?) -> the transformers class a fine-tuned folder is."""


def final_shift_key(gpt: GPT) -> str:
    """Our key of the last LayerNorm's shift: ln_f for pre-LN models, the last block's ln_2 for post-LN."""
    return "ln_f.bias" if gpt.cfg.ln_position == "pre" else f"h.{gpt.cfg.n_layer - 1}.ln_2.bias"


def fold_bias(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, float]:
    """delta (d,) with ``weight @ delta == bias`` (least norm, float64), and the max-abs residual."""
    w, b = weight.detach().double().cpu(), bias.detach().double().cpu()
    delta = torch.linalg.pinv(w) @ b
    return delta, float((w @ delta - b).abs().max()) if b.numel() else 0.0


def write_task_folder(folder: Path, gpt: GPT, head: dict[str, torch.Tensor], task: Task, tok: Tokenizer,
                      info: dict[str, Any]) -> None:
    """config.json + model.safetensors + tokenizer of the native HF model for ``task`` into ``folder`` (an
    existing, empty temporary folder), plus ``lm/`` for classifier folders; see the module docstring."""
    mc = task.kind == "multiple_choice"
    family = hf_family(gpt.cfg)
    state = {k: v.detach().cpu() for k, v in gpt.state_dict().items()}
    extra: dict[str, Any] = {"num_labels": 1 if mc or task.kind == "regression" else task.num_labels}
    gptscale: dict[str, Any] = {"task": task.name, "kind": task.kind, "truncation": info.get("truncation"),
                                "tokenizer_hash": tok.hash}
    if mc:
        weights = {"multiple_choice_head.summary.weight": head["head.weight"],
                   "multiple_choice_head.summary.bias": head["head.bias"]}
        extra.update(summary_type="cls_index", summary_use_proj=True, summary_proj_to_labels=True,
                     summary_activation=None, summary_first_dropout=0.1)
    else:
        share = 0.5 if task.symmetric else 1.0  # similarity: the two orderings' logits are summed
        delta, residual = fold_bias(head["head.weight"], head["head.bias"] * share)
        key = final_shift_key(gpt)
        state[key] = (state[key].double() + delta).to(state[key].dtype)
        weights = {"score.weight": head["head.weight"]}
        gptscale.update(head_bias_folded_into=key, head_bias_share=share, head_bias_residual=residual)
        names = task.label_names or [f"LABEL_{i}" for i in range(extra["num_labels"])]
        if task.kind != "regression":
            extra.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        extra["problem_type"] = "regression" if task.kind == "regression" else "single_label_classification"
    hf_state = to_hf_state_dict(state, gpt.cfg)
    if not mc:
        hf_state.pop("lm_head.weight", None)  # a classifier has no LM head (an untied one lives in lm/)
    hf_state.update({k: v.detach().cpu() for k, v in weights.items()})
    specials = dict(pad_token_id=tok.pad_id, eos_token_id=tok.eod_id, bos_token_id=tok.eod_id)
    hc = hf_config(gpt.cfg, architectures=[HF_CLASSES[family, mc]], **extra, **specials)
    hc.gptscale = gptscale
    hc.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in hf_state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    save_hf(tok, folder, gpt.cfg.n_ctx, task_template=True)
    if not mc:
        lm = folder / LM_DIR
        lm.mkdir()
        write_hf(gpt, lm)
        save_hf(tok, lm, gpt.cfg.n_ctx)
        _add_specials(lm, specials)


def _add_specials(folder: Path, specials: dict[str, int]) -> None:
    """Special ids into a written config.json (generation and padding read them)."""
    f = folder / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **specials}, indent=2, sort_keys=True) + "\n")
