"""The custom task's tables from the ``datasets`` ecosystem, read with the ``datasets`` / ``pyarrow`` libraries
into the same rows (``readers.Table``) a CSV / TSV / JSON-lines file gives, so that label inference, the column
options and everything after are shared (gptscale/tasks/custom.py):

- ``.parquet`` files (pyarrow; several shards of one split, e.g. the Hub's ``data/train-00000-of-00002.parquet``,
  in name order) and ``.arrow`` files (``datasets.Dataset.from_file``);
- ``datasets`` save_to_disk folders (``datasets.load_from_disk``): a DatasetDict's split folders by name, or a
  single Dataset's folder, read for every split like a single file (``bind_data_dir``);
- ``hf:NAME[:CONFIG]``: ``datasets.load_dataset(NAME, CONFIG)`` (the Hub, its cache when offline, or a local
  folder of data files), its splits read from the Arrow files datasets keeps them in (``hub_task``).

A ``datasets.ClassLabel`` column keeps its names in id order (``Table.classes``); its records hold the names
(None for -1, the Hub's "no label").
"""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import Any

from gptscale.tasks.base import HELDOUT, Source, Task, TaskDataError
from gptscale.tasks.readers import Table

HF_PREFIX = "hf:"
"""--data-dir hf:NAME[:CONFIG] loads the data with datasets.load_dataset."""
DATASET_STATE = "state.json"
"""The file that marks a datasets save_to_disk folder of one Dataset (a DatasetDict has dataset_dict.json)."""
SAVE_HINT = ("save it with datasets' save_to_disk(DIR) or to_parquet(DIR/train.parquet ...) and pass "
             "--data-dir DIR")


def _classes(features: Any) -> dict[str, list[str]]:
    """ClassLabel column -> its names in id order, of a ``datasets.Features``."""
    import datasets

    return {c: list(f.names) for c, f in features.items() if isinstance(f, datasets.ClassLabel)}


def _named(recs: list[dict[str, Any]], classes: dict[str, list[str]], where: str) -> None:
    """Replace the ids of each ClassLabel column by their names (None for a missing id or -1), in place."""
    for col, names in classes.items():
        for i, r in enumerate(recs):
            v = r.get(col)
            if v is None or v == -1:
                r[col] = None
            elif isinstance(v, int) and 0 <= v < len(names):
                r[col] = names[v]
            else:
                raise TaskDataError(f"{where} row {i}: {col!r} is {v!r}, not an id of its ClassLabel "
                                    f"{names} (0..{len(names) - 1}, or -1 for no label); fix the data")


def _one(path: Path) -> tuple[list[str], list[dict[str, Any]], dict[str, list[str]]]:
    """(columns, records, ClassLabel names) of one parquet / arrow file or save_to_disk folder."""
    import datasets
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
            features = datasets.Features.from_arrow_schema(table.schema)  # the Hub's / to_parquet's features
            cols, recs = list(table.column_names), table.to_pylist()
        else:
            ds = (datasets.Dataset.from_file(str(path)) if path.suffix.lower() == ".arrow" else
                  datasets.load_from_disk(str(path.parent if path.name == DATASET_STATE else path)))
            if not isinstance(ds, datasets.Dataset):
                raise TaskDataError(f"{path}: a DatasetDict folder ({sorted(ds)}) where one split was expected; "
                                    f"pass the folder holding it (its splits are read by name)")
            features, cols, recs = ds.features, list(ds.column_names), ds.to_list()
    except TaskDataError:
        raise
    except Exception as e:  # noqa: BLE001 (pyarrow / datasets raise many types for a damaged or foreign file)
        raise TaskDataError(f"{path}: not readable as a {path.suffix or 'datasets save_to_disk'} table "
                            f"({type(e).__name__}: {str(e)[:300]}); {SAVE_HINT}") from None
    classes = _classes(features)
    _named(recs, classes, str(path))
    return cols, recs, classes


def read_dataset_table(paths: list[Path]) -> Table:
    """The rows of one split: parquet / arrow files or a save_to_disk folder (several paths: shards, in
    order, each with the same columns); row numbers count over all shards."""
    where = [p.parent if p.name == DATASET_STATE else p for p in paths]
    head, classes = None, {}
    rows: list[tuple[int, dict[str, Any]]] = []
    shards: list[tuple[int, str]] = []
    for path, name in zip(paths, where):
        cols, recs, cls = _one(path)
        if head is None:
            head, classes = cols, cls
        elif cols != head or cls != classes:
            raise TaskDataError(f"{name}: columns {cols} {cls or ''} differ from those of {where[0]} ({head} "
                                f"{classes or ''}); every shard of a split needs the same columns")
        shards.append((len(rows), str(name)))
        rows += [(len(rows) + i, r) for i, r in enumerate(recs)]
    return Table(str(where[0]), head or [], rows, classes, shards)


def bind_data_dir(task: Task, data_dir: Path) -> Task:
    """``Task.data_for`` of the custom task: for ``hf:NAME[:CONFIG]``, ``hub_task``; for a save_to_disk
    folder of one Dataset (its train split), that Dataset for every split and epochs selected on a held-out
    part of it, as for a single file (registry.task_for); else the task as it is."""
    task = dataclasses.replace(task, data_for=None)
    if str(data_dir).startswith(HF_PREFIX):
        return hub_task(task, str(data_dir))
    if not (data_dir / DATASET_STATE).is_file():
        return task
    paths, src = task.resolve(data_dir, "train")
    if paths != [data_dir / DATASET_STATE]:
        return task  # a train file of its own wins
    return dataclasses.replace(task, sources={s: [src] for s in task.sources}, dev_split=HELDOUT)


def _load_hub(spec: str) -> Any:
    """``datasets.load_dataset`` of ``hf:NAME[:CONFIG]`` (all splits); TaskDataError naming the call."""
    import datasets

    from gptscale.tasks.hub import offline

    name, _, config = spec[len(HF_PREFIX):].partition(":")
    call = f"datasets.load_dataset({name!r}{', ' + repr(config) if config else ''})"
    if not name:
        raise TaskDataError(f"--data-dir {spec}: no dataset name; write hf:NAME or hf:NAME:CONFIG "
                            f"(e.g. hf:nyu-mll/glue:sst2)")
    try:
        dd = datasets.load_dataset(name, config or None)
    except Exception as e:  # noqa: BLE001 (no network, unknown name or config, gated dataset ...)
        why = (" HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so only a dataset already in the Hugging Face cache "
               "loads: unset it on a machine with network, or" if offline() else " Check the name and config, or")
        raise TaskDataError(f"--data-dir {spec}: {call} failed ({type(e).__name__}: {str(e)[:300]}).{why} "
                            f"{SAVE_HINT}") from None
    return dd if isinstance(dd, datasets.DatasetDict) else datasets.DatasetDict(train=dd)


def hub_task(task: Task, spec: str) -> Task:
    """The task reading ``hf:NAME[:CONFIG]``: each split (train; dev, else validation; validation; test)
    from the Arrow files ``datasets.load_dataset`` keeps it in, by the split's parser of ``task``; a split the
    dataset lacks is not there."""
    dd = _load_hub(spec)
    files = {s: [Path(f["filename"]) for f in ds.cache_files] for s, ds in dd.items()}
    if not all(files.values()):
        raise TaskDataError(f"--data-dir {spec}: split(s) {[s for s, f in files.items() if not f]} are in memory, "
                            f"not in datasets' cache files; {SAVE_HINT}")
    root = Path(os.path.commonpath([p.parent for ps in files.values() for p in ps]))
    lay = f"{spec} split as datasets.load_dataset gives it (Arrow files under {root})"
    sources: dict[str, list[Source]] = {}
    for split in task.sources:
        theirs = next((s for s in ((split, "validation") if split == "dev" else (split,)) if s in files), None)
        if theirs is not None:
            rel = tuple(glob.escape(str(p.relative_to(root))) for p in files[theirs])
            sources[split] = [Source(rel, task.sources[split][0].parse, lay)]
    if "train" not in sources:
        raise TaskDataError(f"--data-dir {spec}: splits {sorted(dd)}, none named train; a custom task reads "
                            f"train, dev or validation, and test: {SAVE_HINT} with its splits so named")
    return dataclasses.replace(task, folder=str(root), sources=sources)
