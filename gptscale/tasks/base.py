"""Task data types: a task, its sources (files and parsers) and examples."""

from __future__ import annotations

import glob
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptscale.errors import GptscaleError

KINDS = ("classification", "entailment", "similarity", "regression", "multiple_choice")
TRUNCATION = ("halves", "share")
HELDOUT = "heldout"
"""Dev split name meaning: a seeded part of the training split, held out from training (see Task.fit_splits)."""
HELDOUT_SEED = 3535999445
"""Fixed, so every fine-tuning seed selects epochs on the same held-out examples (the GPT-1 reference code's seed)."""
INFER = "?"
"""Task.kind of a task whose kind is read from its files (see Task.labels_from_files)."""


class TaskDataError(GptscaleError, ValueError):
    """Task files that are missing or not in the expected layout; the message names file, layout and fix."""


@dataclass
class Example:
    """One task example. ``choices`` only for multiple choice; ``label`` None on unlabelled test splits."""

    text_a: str
    text_b: str | None = None
    choices: list[str] | None = None
    label: int | float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


Parser = Callable[["Task", list[Path]], list[Example]]


@dataclass(frozen=True)
class Source:
    """One way to find a split: glob patterns inside the task folder (all must match) and their parser."""

    patterns: tuple[str, ...]
    parse: Parser
    layout: str
    """Human description of the expected file layout (for error messages)."""


@dataclass
class Task:
    """A fine-tuning task: what it predicts, how it is scored, where its local files are."""

    name: str
    kind: str
    num_labels: int
    """Classes (1 for regression, number of choices for multiple choice)."""
    label_names: list[str]
    metrics: list[str]
    """Metric names of gptscale.tasks.metrics.METRICS, primary first."""
    hub: tuple[str, str | None]
    """Hugging Face datasets (name, config) used when there is no local data."""
    folder: str
    """Sub-folder of the data root holding the files, e.g. 'glue/RTE'."""
    sources: dict[str, list[Source]]
    """Split name -> candidate sources, first found wins."""
    symmetric: bool = False
    """Pair input without a natural order: encode both orderings (GPT-1 similarity)."""
    train_split: str = "train"
    """Split fine-tuning trains on (finetune.train_split overrides it)."""
    dev_split: str = "dev"
    """Split scored after every epoch to pick the best one (finetune.dev_split overrides it); HELDOUT for
    tasks without a dev file: ``heldout`` examples of the training split, left out of training."""
    heldout: int = 0
    """Examples a HELDOUT dev split takes, at most a fifth of the training split (0: a tenth of it)."""
    accuracy_by: tuple[str, tuple[str, ...]] | None = None
    """(Example.meta key, values): compute_metrics adds ``accuracy_<value>`` on the examples of each value
    (RACE: ``("level", ("middle", "high"))`` -> accuracy_middle, accuracy_high)."""
    submission_digits: bool = False
    """GLUE submission files give 0/1 rather than label names (the tasks whose GLUE files use digits)."""
    hub_columns: dict[str, Any] = field(default_factory=dict)
    """Hub row -> Example: our field (text_a, text_b, choices, label, index) -> the Hub dataset's column; a
    list of columns is joined (text_a) or gathered (choices). Empty: no Hub fallback, local files only."""
    hub_label_offset: int = 0
    """Added to the Hub's integer labels (Story Cloze's answer_right_ending counts from 1)."""
    drop_unlabelled: bool = False
    """Hub rows without a gold label (-1) are dropped instead of kept with label None (SNLI; GLUE test rows
    are kept, unlabelled, for submissions)."""
    labels_from_files: Callable[[Task, Path], Task] | None = None
    """For a task whose kind and labels come from its files (custom): returns the task with them read from a
    data folder; see ``with_labels``."""
    data_for: Callable[[Task, Path], Task] | None = None
    """For a task whose sources depend on what ``data_dir`` is (custom: a datasets save_to_disk folder of one
    Dataset, read for every split; ``hf:NAME[:CONFIG]``): returns the task for that data_dir, its data_for
    None; ``with_labels`` calls it first."""

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names this task knows how to read locally (see ``available_splits`` for what exists)."""
        return tuple(self.sources)

    def labels_known(self) -> bool:
        """Kind and labels are set (always, except a custom task before ``with_labels``)."""
        return self.kind != INFER and (self.kind == "regression" or bool(self.label_names))

    def with_labels(self, data_dir: str | Path) -> Task:
        """This task for ``data_dir`` (``data_for``) with its kind, labels and metrics known: itself, or a new
        Task with those read from the files under ``data_dir`` (``labels_from_files``). The task itself never
        changes."""
        task = self.data_for(self, Path(data_dir)) if self.data_for else self
        if task.labels_from_files is None or task.labels_known():
            return task
        return task.labels_from_files(task, Path(data_dir))

    # ------------------------------------------------------------------------------ file resolution

    def _folders(self, data_dir: Path) -> list[Path]:
        parts = Path(self.folder).parts
        cands = [data_dir / self.folder]
        if len(parts) > 1:
            cands.append(data_dir / parts[-1])  # data_dir is the glue/ folder
        cands.append(data_dir)                   # data_dir is the task folder itself
        return cands

    def _match(self, folder: Path, src: Source) -> list[Path] | None:
        found: list[Path] = []
        for pat in src.patterns:
            hits = sorted(Path(p) for p in glob.glob(str(folder / pat)))
            if not hits:
                return None
            found += hits
        return found

    def resolve(self, data_dir: str | Path, split: str) -> tuple[list[Path], Source]:
        """The file(s) ``split`` reads under ``data_dir`` and their source; TaskDataError when absent."""
        if split not in self.sources:
            raise TaskDataError(f"task {self.name!r} has no split {split!r}; known: {', '.join(self.sources)}")
        root = Path(data_dir)
        folders = [f for f in self._folders(root) if f.is_dir()]
        for folder in folders:
            for src in self.sources[split]:
                hits = self._match(folder, src)
                if hits:
                    return hits, src
        looked = ", ".join(dict.fromkeys(str(f) for f in self._folders(root)))
        layouts = dict.fromkeys(s.layout for s in self.sources[split])  # each layout once, its patterns together
        wanted = " or ".join(", ".join(" + ".join(s.patterns) for s in self.sources[split] if s.layout == lay)
                             + f" ({lay})" for lay in layouts)
        raise TaskDataError(
            f"task {self.name!r} split {split!r}: no file found; looked in {looked} for {wanted}. "
            f"Pass --data-dir pointing at the data root (the folder holding {self.folder}/) or at the "
            f"task folder itself.")

    def available_splits(self, data_dir: str | Path) -> list[str]:
        """Split names whose files exist under ``data_dir``."""
        out = []
        for split in self.sources:
            try:
                self.resolve(data_dir, split)
            except TaskDataError:
                continue
            out.append(split)
        return out

    def load(self, data_dir: str | Path, split: str) -> list[Example]:
        """Examples of ``split`` read from the local files under ``data_dir``; without them, from the
        Hugging Face Hub when online (gptscale/tasks/hub.py; never when HF_HUB_OFFLINE=1)."""
        try:
            paths, src = self.resolve(data_dir, split)
        except TaskDataError as local:
            from gptscale.tasks import hub as task_hub  # here, not on top: hub.py imports this module

            if not self.hub[0] or split not in task_hub.HUB_SPLITS or task_hub.offline():
                raise
            try:
                return task_hub.load_from_hub(self, split)
            except Exception as e:  # noqa: BLE001 (no network, unknown split, gated dataset ...: report both ways tried)
                raise TaskDataError(f"{local} The Hub fallback datasets.load_dataset{self.hub} failed too "
                                    f"({type(e).__name__}: {str(e)[:300]}); set HF_HUB_OFFLINE=1 to skip it") from None
        try:
            return src.parse(self.with_labels(data_dir), paths)
        except TaskDataError as e:
            fix = "fix the file" if self.labels_from_files else "pass --data-dir pointing at the original files"
            raise TaskDataError(f"{e} [task {self.name} split {split!r} expects: {src.layout}; {fix}]") from None

    def fit_splits(self, data_dir: str | Path, train_split: str = "", dev_split: str = ""
                   ) -> tuple[list[Example], list[Example], tuple[str, str]]:
        """(train, dev, (train split, dev split)) for fine-tuning: the named splits, else the task's defaults.
        A HELDOUT dev split is a seeded sample (HELDOUT_SEED) of the training split, which then leaves it out
        (Story Cloze: GPT-1's 374 of the 1871 val stories; IMDB: 2500 of its 25k train reviews)."""
        tr, dv = train_split or self.train_split, dev_split or self.dev_split
        try:
            train = self.load(data_dir, tr)
        except TaskDataError as e:
            here = [s for s in self.available_splits(data_dir) if s != tr]
            raise TaskDataError(f"{e}" + (f". Splits present there: {', '.join(here)}; to fine-tune on them pass "
                                          f"--finetune.train_split=SPLIT --finetune.dev_split=SPLIT|{HELDOUT}"
                                          if here else "")) from None
        if dv != HELDOUT:
            if dv == tr:
                raise TaskDataError(f"task {self.name}: the dev split {dv!r} is the training split; pass another "
                                    f"--finetune.dev_split (splits: {', '.join(self.sources)}, or {HELDOUT})")
            return train, self.load(data_dir, dv), (tr, dv)
        n = min(self.heldout, len(train) // 5) if self.heldout else len(train) // 10
        if not 0 < n < len(train):
            raise TaskDataError(f"task {self.name}: cannot hold out {n} of the {len(train)} examples of split "
                                f"{tr!r} as the dev split; pass --finetune.dev_split=<a split with its own file>")
        dev_idx = set(random.Random(HELDOUT_SEED).sample(range(len(train)), n))
        return ([ex for i, ex in enumerate(train) if i not in dev_idx], [train[i] for i in sorted(dev_idx)],
                (tr, f"{HELDOUT} ({n} of {tr})"))

    # ------------------------------------------------------------------------------------- labels

    def label_of(self, raw: str, where: str) -> int | float:
        """Label index (or float for regression) of a raw label string from a file."""
        raw = raw.strip()
        if self.kind == "regression":
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise TaskDataError(f"{where}: label {raw!r} is not a finite number (task {self.name} is a "
                                    f"regression)")
            return value
        if raw in self.label_names:
            return self.label_names.index(raw)
        ids = not any(_is_number(n) for n in self.label_names)  # class names that are numbers: a digit is a name
        if ids and raw.isdigit() and int(raw) < self.num_labels:
            return int(raw)
        raise TaskDataError(f"{where}: unknown label {raw!r} for task {self.name}; expected one of "
                            f"{self.label_names}" + (f" or 0..{self.num_labels - 1}" if ids else ""))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _S(pattern: str | tuple[str, ...], parse: Parser, layout: str) -> Source:
    return Source((pattern,) if isinstance(pattern, str) else pattern, parse, layout)
