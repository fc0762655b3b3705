"""GPT-1 fine-tuning tasks: registry, local loaders, and the paper's input transformations (section 3.3).

    task = TASKS["rte"]
    train = task.load("../shared/data", "train")         # or load_task("rte", "../shared/data/glue/RTE", "train")
    seqs = encode_example(task, train[0], tok, max_len=512)       # list of token-id lists
    ids, extract_pos, lm_mask = collate([seqs, ...], tok.pad_id)  # (B, n_seq, T), (B, n_seq), (B, n_seq, T)

**Files.** Every loader reads local files with the stdlib (``csv`` with ``QUOTE_NONE`` for the GLUE TSVs,
which contain unbalanced quotes; ``json``; all in gptscale/tasks/readers.py, UTF-8 only: another encoding is an
error naming line and byte offset), or pyarrow for IMDB parquet. ``data_dir`` is either the data
root (holding ``glue/RTE``, ``scitail``, ``race``, ``story_cloze``, ``imdb`` ...), the ``glue`` folder, or
the task folder itself. ``Task.resolve(data_dir, split)`` says which file(s) a split reads. Split names:

- ``train`` / ``dev`` / ``test``: the standard GLUE files (``dev_matched.tsv`` / ``test_matched.tsv`` for
  MNLI). Where only the shared samples exist, ``train`` falls back to ``train_9k_sample.json`` and ``dev``
  to ``dev_1k_sample_from_train.json`` (MNLI, QNLI train, QQP, SNLI). That "dev" sample is drawn from the
  original TRAIN set: scores on it are not comparable to published dev scores.
- MNLI also has ``dev_matched``, ``dev_mismatched``, ``test_matched``, ``test_mismatched``.
- Explicit sample splits: ``train_9k_sample``, ``dev_1k_sample``, ``kshot16_train``, ``kshot16_dev``
  (MNLI's ``kshot16_dev_matched.tsv``).
- ``scitail``: train/dev/test (``scitail_1.0_{split}.tsv``); ``race``: train/dev/test (``{split}-middle.jsonl``
  + ``{split}-high.jsonl``); ``story_cloze``: ``val`` (= ``train``: GPT-1 fine-tuned on it) and ``test``;
  ``imdb``: train/test (HF parquet, ``train.csv``, or the ``aclImdb`` folder).

Test splits of GLUE carry no labels: ``Example.label`` is None and ``meta["index"]`` keeps the GLUE
``index`` column for submission files. Any missing file, missing column or unknown label is a
``TaskDataError`` naming the file (and line), the expected layout and the ``--data-dir`` to pass.

**Labels** follow the Hugging Face GLUE conventions: CoLA unacceptable=0/acceptable=1, SST-2 negative/positive,
MRPC not_equivalent/equivalent, QQP not_duplicate/duplicate, MNLI and SNLI entailment/neutral/contradiction,
QNLI and RTE entailment=0/not_entailment=1, WNLI not_entailment=0/entailment=1 (the TSV's 1 means entailment),
SciTail entails=0/neutral=1, STS-B a float in [0, 5], RACE A-D -> 0-3, Story Cloze ending 1/2 -> 0/1.
SNLI pairs without a gold label (``-``) are dropped, as everyone does.

**Per-task rules** are ``Task`` fields set in registry.py, so a new task touches that file only: ``hub_columns``
/ ``hub_label_offset`` / ``drop_unlabelled`` (the Hub fallback, gptscale/tasks/hub.py), ``accuracy_by``
(RACE's per-level accuracy), ``submission_digits`` (GLUE submissions as 0/1), ``labels_from_files`` (the
custom task: ``Task.with_labels`` returns a new Task with kind and labels read from its files).

The custom task (your CSV / TSV / JSONL / parquet files, a datasets save_to_disk folder or hf:NAME; its kind
inferred from the labels only when they are unambiguous, else an error asking for --finetune.task_kind):
gptscale/tasks/custom.py, gptscale/tasks/datasets_io.py.

Input transformations, truncation, batching and scoring: gptscale/tasks/transforms.py.
"""

from gptscale.tasks.base import KINDS, TRUNCATION, Example, Source, Task, TaskDataError
from gptscale.tasks.custom import custom_task
from gptscale.tasks.registry import TASKS, get_task, load_task
from gptscale.tasks.transforms import collate, compute_metrics, encode_example

__all__ = [
    "KINDS",
    "TASKS",
    "TRUNCATION",
    "Example",
    "Source",
    "Task",
    "TaskDataError",
    "collate",
    "compute_metrics",
    "custom_task",
    "encode_example",
    "get_task",
    "load_task",
]
