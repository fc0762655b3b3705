"""Task data from the Hugging Face Hub, when there are no local files and the machine is online.

`Task.load` reads local files first; only when a split's files are missing, and neither HF_HUB_OFFLINE nor
HF_DATASETS_OFFLINE is set, does it call `datasets.load_dataset(*task.hub, split=HUB_SPLITS[split])` and map
the rows with HUB_COLUMNS (plain dicts: our field -> the Hub dataset's column). Labels go through
`Task.label_of`, so the Hub's integer labels (GLUE conventions, the same as ours) and string labels (SciTail)
are checked like file labels; -1 (GLUE test splits, SNLI without gold label) means "no label" (dropped for
SNLI, None for test). The tests set HF_HUB_OFFLINE=1 and read local files only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test", "val": "validation",
              "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched",
              "test_matched": "test_matched", "test_mismatched": "test_mismatched"}

_PAIR = {"text_a": "sentence1", "text_b": "sentence2", "label": "label", "index": "idx"}
_NLI = {"text_a": "premise", "text_b": "hypothesis", "label": "label", "index": "idx"}
HUB_COLUMNS: dict[str, dict[str, Any]] = {
    "cola": {"text_a": "sentence", "label": "label", "index": "idx"},
    "sst2": {"text_a": "sentence", "label": "label", "index": "idx"},
    "imdb": {"text_a": "text", "label": "label"},
    "mrpc": _PAIR, "stsb": _PAIR, "rte": _PAIR, "wnli": _PAIR,
    "qqp": {"text_a": "question1", "text_b": "question2", "label": "label", "index": "idx"},
    "qnli": {"text_a": "question", "text_b": "sentence", "label": "label", "index": "idx"},
    "mnli": _NLI, "snli": _NLI,
    "scitail": {"text_a": "premise", "text_b": "hypothesis", "label": "label"},
    "race": {"text_a": "article", "text_b": "question", "choices": "options", "label": "answer", "index": "example_id"},
    "story_cloze": {"text_a": ["input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4"],
                    "choices": ["sentence_quiz1", "sentence_quiz2"], "label": "answer_right_ending",
                    "label_offset": -1, "index": "story_id"},
}
"""Per task: our Example field -> the Hub dataset's column (a list of columns is joined / gathered)."""


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_examples(task, rows: Iterable[dict[str, Any]], where: str) -> list:
    """Examples of `task` from Hub-layout rows (dicts), e.g. a `datasets.Dataset`."""
    from gptscale.tasks import Example, TaskDataError

    cols = HUB_COLUMNS.get(task.name)
    if cols is None:
        raise TaskDataError(f"{where}: task {task.name} has no Hub column map; use local files (--data-dir)")
    out = []
    for n, r in enumerate(rows):
        try:
            a = cols["text_a"]
            text_a = " ".join(str(r[c]).strip() for c in a) if isinstance(a, list) else r[a]
            text_b = r[cols["text_b"]] if "text_b" in cols else None
            ch = cols.get("choices")
            choices = None if ch is None else [r[c] for c in ch] if isinstance(ch, list) else list(r[ch])
            raw = r.get(cols["label"])
        except KeyError as e:
            raise TaskDataError(f"{where}: row {n} has no column {e} (has {sorted(r)}); expected the Hub layout "
                                f"{HUB_COLUMNS[task.name]}") from None
        if raw is None or raw == -1 or raw == "":
            if task.name == "snli":
                continue
            label = None
        elif task.name == "race":
            label = task.label_of(str(raw), f"{where} row {n}")
        else:
            value = raw + cols.get("label_offset", 0) if isinstance(raw, int) else raw
            label = task.label_of(str(value), f"{where} row {n}")
        meta = {"index": r[cols["index"]]} if "index" in cols and cols["index"] in r else {"index": n}
        out.append(Example(text_a, text_b, choices, label, meta))
    return out


def load_from_hub(task, split: str, source: tuple[str, str | None] | None = None) -> list:
    """`split` of `task` via datasets.load_dataset (the Hub name, or `source`: any path/name it accepts)."""
    import datasets

    name, config = source or task.hub
    hub_split = HUB_SPLITS.get(split, split)
    ds = datasets.load_dataset(name, config, split=hub_split) if config else \
        datasets.load_dataset(name, split=hub_split)
    return hub_examples(task, ds, f"datasets.load_dataset({name!r}, {config!r}, split={hub_split!r})")
