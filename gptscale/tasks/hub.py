"""Task data from the Hugging Face Hub, when there are no local files and the machine is online.

`Task.load` reads local files first; only when a split's files are missing, and neither HF_HUB_OFFLINE nor
HF_DATASETS_OFFLINE is set, does it call `datasets.load_dataset(*task.hub, split=HUB_SPLITS[split])` and map
the rows with the task's `hub_columns` (our field -> the Hub dataset's column, set in registry.py). Labels go
through `Task.label_of`, so the Hub's integer labels (GLUE conventions, the same as ours, shifted by
`hub_label_offset`) and string labels (SciTail, RACE) are checked like file labels; -1 (GLUE test splits, SNLI
without gold label) means "no label": dropped for tasks with `drop_unlabelled` (SNLI), None otherwise. The
tests set HF_HUB_OFFLINE=1 and read local files only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from gptscale.tasks.base import Example, Task, TaskDataError

HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test", "val": "validation",
              "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched",
              "test_matched": "test_matched", "test_mismatched": "test_mismatched"}


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _fields(cols: dict[str, Any], r: dict[str, Any]) -> tuple[str, str | None, list[str] | None, Any]:
    """(text_a, text_b, choices, raw label) of one Hub row; KeyError for a missing column."""
    a, ch = cols["text_a"], cols.get("choices")
    text_a = " ".join(str(r[c]).strip() for c in a) if isinstance(a, list) else r[a]
    text_b = r[cols["text_b"]] if "text_b" in cols else None
    choices = None if ch is None else [r[c] for c in ch] if isinstance(ch, list) else list(r[ch])
    return text_a, text_b, choices, r.get(cols["label"])


def hub_examples(task: Task, rows: Iterable[dict[str, Any]], where: str) -> list[Example]:
    """Examples of `task` from Hub-layout rows (dicts), e.g. a `datasets.Dataset`."""
    cols = task.hub_columns
    if not cols:
        raise TaskDataError(f"{where}: task {task.name} has no Hub column map; use local files (--data-dir)")
    out = []
    for n, r in enumerate(rows):
        try:
            text_a, text_b, choices, raw = _fields(cols, r)
        except KeyError as e:
            raise TaskDataError(f"{where}: row {n} has no column {e} (has {sorted(r)}); expected the Hub layout "
                                f"{cols}") from None
        if raw is None or raw == -1 or raw == "":
            if task.drop_unlabelled:
                continue
            label = None
        else:
            value = raw + task.hub_label_offset if isinstance(raw, int) else raw
            label = task.label_of(str(value), f"{where} row {n}")
        meta = {"index": r[cols["index"]]} if "index" in cols and cols["index"] in r else {"index": n}
        out.append(Example(text_a, text_b, choices, label, meta))
    return out


def load_from_hub(task: Task, split: str, source: tuple[str, str | None] | None = None) -> list[Example]:
    """`split` of `task` via datasets.load_dataset (the Hub name, or `source`: any path/name it accepts)."""
    import datasets  # here, not on top: only the Hub fallback needs the (slow to import) datasets library

    name, config = source or task.hub
    hub_split = HUB_SPLITS.get(split, split)
    ds = datasets.load_dataset(name, config, split=hub_split) if config else \
        datasets.load_dataset(name, split=hub_split)
    return hub_examples(task, ds, f"datasets.load_dataset({name!r}, {config!r}, split={hub_split!r})")
