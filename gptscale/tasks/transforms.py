"""GPT-1 input transformations (paper section 3.3, Figure 1), batching and scoring of task examples.

**Input transformations** (GPT-1 Figure 1), token ids with the tokenizer's start / delim / extract ids:

- classification:  ``[start] a [extract]``
- entailment:      ``[start] premise [delim] hypothesis [extract]`` (also non-symmetric regression pairs)
- similarity:      both ``[start] a [delim] b [extract]`` and ``[start] b [delim] a [extract]`` (MRPC, QQP,
  STS-B); the model sums the two extract states
- multiple choice: one ``[start] context [delim] answer_k [extract]`` per choice; RACE's context is the
  article followed by ``" " + question`` (the question is encoded separately, so it is never cut off).

**Scoring**: ``compute_metrics`` gives the task's metrics, primary first, plus ``accuracy_<value>`` per value of
``Task.accuracy_by`` (RACE: per school level).

**Truncation** (``truncation=`` of ``encode_example``), every sequence always fits ``max_len`` and keeps its
special tokens; text is cut from the end of a segment:

- single segment: ``a[:max_len - 2]``.
- ``"halves"`` (default, the GPT-1 reference code's rule): each of the two segments keeps at most
  ``max_len // 2 - 2`` tokens (total <= ``max_len - 1``).
- ``"share"``: the two segments share ``B = max_len - 3`` tokens: when both fit nothing is cut, else the
  shorter keeps ``min(len, B // 2)`` and the longer gets the rest (never less text than ``"halves"``); of two
  equally long segments the first keeps ``B // 2``. This is Hugging Face's ``truncation="longest_first"``
  exactly, so a tokenizer with GPT-1's post-processor (gptscale.hf.task_export) cuts pairs the same way.
- similarity: each ordering is cut as a pair of its own (they differ only for equally long segments).
- multiple choice: each answer follows the rule above against the context; the context budget is then
  ``max_len - 3 - (longest kept answer)`` so every choice sees the same context. When there is a question
  (RACE) article and question share that budget by the ``"share"`` rule (question kept whole if it fits
  in half of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gptscale.tasks import metrics as metrics_mod
from gptscale.tasks.base import TRUNCATION, Example, Task

# ------------------------------------------------------------------------------- input transformations


def _cut2(a: list[int], b: list[int], max_len: int, truncation: str) -> tuple[list[int], list[int]]:
    """Two segments cut so that [start] a [delim] b [extract] fits max_len (see the module docstring)."""
    if truncation == "halves":
        cap = max_len // 2 - 2
        return a[:cap], b[:cap]
    return _share(a, b, max_len - 3)


def _share(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """a and b cut to len(a) + len(b) <= budget: the shorter keeps min(len, budget // 2), the longer the rest."""
    budget = max(budget, 0)
    if len(a) + len(b) <= budget:
        return a, b
    if len(a) <= len(b):
        ka = min(len(a), budget // 2)
        return a[:ka], b[:budget - ka]
    kb = min(len(b), budget // 2)
    return a[:budget - kb], b[:kb]


def encode_example(task: Task, example: Example, tokenizer: Any, max_len: int,
                   truncation: str = "halves") -> list[list[int]]:
    """Token-id sequences of one example (GPT-1 Figure 1): 1 sequence, 2 for symmetric pairs (both orders),
    k for k-way multiple choice; each at most ``max_len`` tokens and always with its special tokens."""
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
    if max_len < 8:
        raise ValueError(f"max_len={max_len} is too small for the task formats (>= 8)")
    s, d, e = tokenizer.start_id, tokenizer.delim_id, tokenizer.extract_id
    if None in (s, d, e):
        raise ValueError(f"{tokenizer!r} lacks the start/delim/extract specials GPT-1's task formats need")
    enc = tokenizer.encode
    if task.kind == "multiple_choice" or example.choices is not None:
        if not example.choices:
            raise ValueError(f"task {task.name}: a multiple-choice example needs choices")
        article = enc(example.text_a)
        question = enc(" " + example.text_b) if example.text_b else []
        answers = [enc(c) for c in example.choices]
        ctx_full = article + question
        cut = [_cut2(ctx_full, ans, max_len, truncation)[1] for ans in answers]
        ctx_budget = max_len - 3 - max(len(c) for c in cut)
        if truncation == "halves":
            ctx_budget = min(ctx_budget, max_len // 2 - 2)
        art, q = _share(article, question, ctx_budget)
        return [[s] + art + q + [d] + ans + [e] for ans in cut]
    a = enc(example.text_a)
    if example.text_b is None:
        return [[s] + a[:max_len - 2] + [e]]
    b = enc(example.text_b)
    orders = [(a, b), (b, a)] if task.symmetric else [(a, b)]
    return [[s] + x + [d] + y + [e] for x, y in (_cut2(p, q, max_len, truncation) for p, q in orders)]


def collate(encoded_batch: Sequence[Sequence[Sequence[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    """Pad a batch of ``encode_example`` outputs.

    Returns torch tensors ``ids`` (B, n_seq, T) int64 padded with ``pad_id``, ``extract_pos`` (B, n_seq)
    int64 (index of each sequence's last token, the extract token) and ``lm_mask`` (B, n_seq, T) bool, True
    on real tokens (False on padding) for the auxiliary LM loss; T is the longest sequence of the batch.
    """
    import torch  # here, not on top: the loaders and outputs (read by the sweep and the launcher) need no torch

    if not encoded_batch:
        raise ValueError("collate: empty batch")
    n_seq = {len(x) for x in encoded_batch}
    if len(n_seq) != 1:
        raise ValueError(f"collate: examples have different numbers of sequences {sorted(n_seq)}")
    ns = n_seq.pop()
    lens = np.array([[len(s) for s in x] for x in encoded_batch], dtype=np.int64)
    if lens.min() < 1:
        raise ValueError("collate: empty sequence in the batch")
    T = int(lens.max())
    ids = np.full((len(encoded_batch), ns, T), pad_id, dtype=np.int64)
    for i, x in enumerate(encoded_batch):
        for j, seq in enumerate(x):
            ids[i, j, :len(seq)] = seq
    mask = np.arange(T)[None, None, :] < lens[:, :, None]
    return torch.from_numpy(ids), torch.from_numpy(lens - 1), torch.from_numpy(mask)


# -------------------------------------------------------------------------------------------- scoring


def compute_metrics(task: Task, preds: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
    """The task's metrics (primary first) on labelled examples, then ``accuracy_<value>`` for each value of the
    task's ``accuracy_by`` meta key (RACE: ``accuracy_middle`` / ``accuracy_high``)."""
    labels = [ex.label for ex in examples]
    if any(lab is None for lab in labels):
        raise ValueError(f"task {task.name}: some examples have no label (a test split?)")
    out = metrics_mod.compute(task.metrics, list(preds), labels)
    if task.accuracy_by:
        key, values = task.accuracy_by
        for value in values:
            idx = [i for i, ex in enumerate(examples) if ex.meta.get(key) == value]
            if idx:
                out[f"accuracy_{value}"] = metrics_mod.accuracy([preds[i] for i in idx], [labels[i] for i in idx])
    return out
