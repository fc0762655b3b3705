"""The custom task's labels and files: the kind is inferred only when the labels are unambiguous (else an error
asking for --finetune.task_kind), an explicit kind validates them, CSV / TSV / JSON lines are each read by one
parser whose errors name file and line, non-UTF-8 files name line and byte offset, and every needed column is
checked when the file is read: through `gptscale finetune` that is before any run folder, model or engine."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from gptscale.tasks import TASKS, TaskDataError, load_task
from gptscale.tasks.base import HELDOUT
from gptscale.tasks.outputs import extra_splits
from gptscale.tasks.readers import read_dicts
from gptscale.tasks.registry import task_for
from helpers import TINY, gptscale


def labelled_csv(path: Path, labels: list[str], header: str = "text,label") -> Path:
    path.write_text(header + "\n" + "".join(f"text {i},{y}\n" for i, y in enumerate(labels)), encoding="utf-8")
    return path


@pytest.mark.parametrize("labels, kind, names", [
    (["0", "1", "1", "0"], "classification", ["0", "1"]),
    (["2", "0", "1"], "classification", ["0", "1", "2"]),
    (["pos", "neg", "pos"], "classification", ["neg", "pos"]),
    (["0.5", "4", "3.8"], "regression", []),       # a fractional value: the integers among them are scores too
    (["-0.25", "1e-3", "2"], "regression", []),
])
def test_unambiguous_labels_are_inferred(tmp_path, labels, kind, names):
    task, folder = task_for("custom", labelled_csv(tmp_path / "train.csv", labels))
    assert (task.kind, task.label_names, task.num_labels) == (kind, names, max(len(names), 1))
    got = [e.label for e in task.load(folder, "train")]
    assert got == ([float(y) for y in labels] if kind == "regression" else [names.index(y) for y in labels])


@pytest.mark.parametrize("labels, seen, why", [
    (["-1", "1", "-1"], "['-1', '1']", "whole numbers but not the class ids 0..1"),
    (["1", "2", "5"], "['1', '2', '5']", "whole numbers but not the class ids 0..2"),
    (["1", "2", "3", "4", "5"], "['1', '2', '3', '4', '5']", "not the class ids 0..4"),  # star ratings
    (["0.0", "1.0"], "['0.0', '1.0']", "not the class ids"),
    (["pos", "neg", "0", "1"], "['0', '1', 'neg', 'pos']", "mix numbers ['0', '1'] with names"),
    (["pos", "pos"], "['pos']", "a single distinct label"),
])
def test_ambiguous_labels_ask_for_the_kind(tmp_path, labels, seen, why):
    f = labelled_csv(tmp_path / "data.csv", labels)
    with pytest.raises(TaskDataError) as e:
        task_for("custom", f)
    msg = str(e.value)
    assert msg.startswith(f"{f} (label column 'label')") and seen in msg and why in msg
    assert "--finetune.task_kind=classification|regression" in msg and "\n" not in msg


def test_json_lines_labels_keep_their_json_types(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps({"text": f"t{i}", "label": y}) + "\n" for i, y in enumerate([0, 1, 1])))
    assert task_for("custom", f)[0].label_names == ["0", "1"]
    f.write_text("".join(json.dumps({"text": f"t{i}", "label": y}) + "\n" for i, y in enumerate([0.5, 2, 1])))
    task, folder = task_for("custom", f)
    assert task.kind == "regression" and [e.label for e in task.load(folder, "train")] == [0.5, 2.0, 1.0]
    f.write_text(json.dumps({"text": "a", "label": 1}) + "\n" + json.dumps({"text": "b", "label": [1]}) + "\n")
    with pytest.raises(TaskDataError, match=r"train.jsonl:2: the label in column 'label' is a JSON list"):
        task_for("custom", f)


def test_explicit_kind_or_names_validate_the_labels(tmp_path):
    f = labelled_csv(tmp_path / "train.csv", ["-1", "1", "1"])
    task, folder = task_for("custom", f, kind="classification")
    assert task.label_names == ["-1", "1"] and [e.label for e in task.load(folder, "train")] == [0, 1, 1]
    task, folder = task_for("custom", f, kind="regression")
    assert task.metrics[0] == "pearson" and [e.label for e in task.load(folder, "train")] == [-1.0, 1.0, 1.0]
    labelled_csv(f, ["1", "2", "10"])
    assert task_for("custom", f, kind="classification")[0].label_names == ["1", "2", "10"]  # numeric order
    (tmp_path / "dev.csv").write_text("text,label\nx,2\ny,0\n")  # 0 is not a class of train (1, 2, 10)
    with pytest.raises(TaskDataError, match=r"dev.csv:3: unknown label '0' for task custom; expected one of "
                                            r"\['1', '2', '10'\] \["):
        load_task("custom", tmp_path, "dev", kind="classification")
    labelled_csv(f, ["pos", "neg", "0", "1"])
    with pytest.raises(TaskDataError, match=r"mix numbers and names; give the classes in id order with "
                                            r"--finetune.label_names"):
        task_for("custom", f, kind="classification")
    task, folder = task_for("custom", f, label_names=["neg", "pos"])  # names given: a digit is a class id
    assert task.kind == "classification" and [e.label for e in task.load(folder, "train")] == [1, 0, 0, 1]
    with pytest.raises(TaskDataError, match=r"train.csv:2: label 'pos' is not a finite number \(task custom is a "
                                            r"regression\)"):
        load_task("custom", f, "train", kind="regression")
    labelled_csv(f, ["1.5", "nan"])
    with pytest.raises(TaskDataError, match=r"train.csv:3: label 'nan' is not a finite number"):
        load_task("custom", f, "train", kind="regression")
    with pytest.raises(TaskDataError, match=r"label_names \['a', 'b'\] are classes, but "
                                            r"--finetune.task_kind=regression has none"):
        task_for("custom", f, kind="regression", label_names=["a", "b"])
    with pytest.raises(TaskDataError, match=r"kind 'multiple_choice' is not one of"):
        task_for("custom", f, kind="multiple_choice")


def test_rows_must_match_the_header(tmp_path):
    """A tab inside a TSV text, or an unquoted comma in a CSV, is an error at its line: never a new class."""
    t = tmp_path / "data.tsv"
    t.write_text("text\tlabel\na fine film\tpos\nawful\tjust awful\tneg\nok\tneg\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"data.tsv:3: 3 fields, but the header \(line 1\) names 2 "
                                            r"\(\['text', 'label'\]\); a tab inside a text"):
        task_for("custom", t)
    c = tmp_path / "data.csv"
    c.write_text('text,label\n"fine, really",pos\nbad, really,neg\n', encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"data.csv:3: 3 fields.*must be inside double quotes"):
        task_for("custom", c)
    c.write_text('text,label\n"fine, really",pos\n"a ""quoted"" word\nover two lines",neg\nshort\n')
    with pytest.raises(TaskDataError, match=r"data.csv:5: 1 fields"):  # line numbers count the quoted line break
        task_for("custom", c)
    c.write_text('text,label\n"fine, really",pos\n"a ""quoted"", word\nover two lines",neg,x\n')
    with pytest.raises(TaskDataError, match=r"data.csv:3: 3 fields"):  # the line the row starts on
        task_for("custom", c)
    c.write_text('text,label\n"fine, really",pos\n"a ""quoted"" word\nover two lines",neg\n')
    task, folder = task_for("custom", c)
    assert [(e.text_a, e.label) for e in task.load(folder, "train")] == [
        ("fine, really", 1), ('a "quoted" word\nover two lines', 0)]


def test_every_needed_column_is_checked_when_a_file_is_read(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    labelled_csv(d / "train.csv", ["a", "b"], header="text,y")
    with pytest.raises(TaskDataError) as e:
        task_for("custom", d)  # inferring the labels reads the train file: the label column is checked there
    assert str(e.value) == (f"{d / 'train.csv'}: no column(s) ['label']; its header has ['text', 'y']; expected "
                            f"CSV/TSV with a header, JSON lines, parquet, .arrow or a DatasetDict save_to_disk split "
                            f"folder, with columns ['text', 'label'] (label optional on test); set --text-col / "
                            f"--text-pair-col / --label-col to the file's column names")
    task, _ = task_for("custom", d, label_col="y")
    assert task.label_names == ["a", "b"]
    (d / "dev.csv").write_text("text\nx\n")  # no label column in dev: an error when dev is read, not later
    with pytest.raises(TaskDataError, match=r"dev.csv: no column\(s\) \['y'\]; its header has \['text'\]"):
        task.fit_splits(d)
    (d / "dev.csv").unlink()
    (d / "test.csv").write_text("text\nx\n")  # a test file may have no labels
    assert [e.label for e in task.load(d, "test")] == [None]
    (d / "train.csv").write_text("text,y\nx,a\ny,\nz,b\n")
    with pytest.raises(TaskDataError, match=r"train.csv:3: no label in column 'y'; every row of a train / dev"):
        task.load(d, "train")
    j = tmp_path / "pairs.jsonl"
    j.write_text(json.dumps({"s1": "a", "s2": "b", "y": "no"}) + "\n" + json.dumps({"s1": "c", "y": "yes"}) + "\n")
    with pytest.raises(TaskDataError, match=r"pairs.jsonl:2: no key\(s\) \['s2'\] \(or null\); this line has "
                                            r"\['s1', 'y'\]"):
        task_for("custom", j, text_col="s1", text_pair_col="s2", label_col="y")


def test_non_utf8_files_name_line_and_byte_offset(tmp_path, data_dir):
    f = tmp_path / "reviews.csv"
    f.write_bytes(b"text,label\ngood,pos\n" + "caf\u00e9 au lait,neg\n".encode("latin-1"))
    with pytest.raises(TaskDataError) as e:
        task_for("custom", f)
    assert str(e.value).startswith(f"{f}:3: not UTF-8: byte 0xe9 at byte offset 23 (line 3, byte 4 of the line)")
    assert "re-encode the file as UTF-8, e.g. iconv -f WINDOWS-1252 -t UTF-8 reviews.csv" in str(e.value)
    rte = tmp_path / "glue" / "RTE"  # a GLUE TSV too: the real RTE train file with one Latin-1 byte in row 3
    rte.mkdir(parents=True)
    lines = (data_dir / "glue" / "RTE" / "train.tsv").read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b" ", b" \xa0", 1)
    (rte / "train.tsv").write_bytes(b"\n".join(lines))
    offset = sum(len(x) + 1 for x in lines[:3]) + lines[3].index(b"\xa0")
    with pytest.raises(TaskDataError, match=rf"train.tsv:4: not UTF-8: byte 0xa0 at byte offset {offset} "):
        load_task("rte", tmp_path, "train")


# ----------------------------------------------------------------------------- through the CLI


def csv_text(header: list[str], rows: list[tuple]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue()


def finetune_error(tmp_path: Path, data: Path, *extra: str) -> str:
    """stderr's error line of a `gptscale finetune --task custom` that must stop with rc 2, on its data, before
    any model: no --data.tokenizer is given, which building the model (`--init none`) would stop on first, and
    the run folder (made before the engine) must not exist."""
    run = tmp_path / "run"
    p = gptscale("finetune", "--task", "custom", "--init", "none", "--data-dir", data, f"--train.run_dir={run}",
                 *TINY, *extra, expect_ok=False, timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr and not run.exists()
    lines = [line for line in p.stderr.splitlines() if line.startswith("gptscale finetune: error: ")]
    assert len(lines) == 1, p.stderr[-3000:]
    return lines[0].removeprefix("gptscale finetune: error: ")


def test_cli_stops_on_bad_custom_files_before_any_model(tmp_path, data_dir):
    sst = [(e.text_a, e.label) for e in TASKS["sst2"].load(data_dir, "dev")[:40]]
    f = tmp_path / "reviews.csv"
    f.write_text(csv_text(["review", "stars"], [(t, 2 * y - 1) for t, y in sst]), encoding="utf-8")  # -1 / 1
    msg = finetune_error(tmp_path, f, "--text-col", "review", "--label-col", "stars")
    assert msg.startswith(f"{f} (label column 'stars'): labels ['-1', '1'] are whole numbers") and \
        "--finetune.task_kind=classification|regression" in msg
    msg = finetune_error(tmp_path, f, "--text-col", "review")  # --label-col forgotten: label is not there
    assert msg.startswith(f"{f}: no column(s) ['label']; its header has ['review', 'stars']")
    t = tmp_path / "reviews.tsv"
    t.write_text("text\tlabel\n" + "".join(f"{x}\t{y}\n" for x, y in sst[:5]) + "tab\tinside\t1\n", encoding="utf-8")
    assert finetune_error(tmp_path, t).startswith(f"{t}:7: 3 fields, but the header (line 1) names 2")
    f.write_bytes(csv_text(["text", "label"], sst[:5]).encode() + b"na\xefve,1\n")
    msg = finetune_error(tmp_path, f)
    assert msg.startswith(f"{f}:7: not UTF-8: byte 0xef at byte offset ") and "re-encode the file as UTF-8" in msg


# ------------------------------------------- datasets: save_to_disk folders, parquet files, hf:NAME[:CONFIG]

SST_CLASSES = ["negative", "positive"]
MRPC_CLASSES = ["not_equivalent", "equivalent"]  # id order is not sorted order: the ClassLabel's order must win
RTE = {"text_col": "sentence1", "text_pair_col": "sentence2"}


def glue_dataset(data_dir: Path, task: str, split: str, cols: list[str], classes: list[str]):
    """A datasets.Dataset of a GLUE split as its registry task reads the TSV, the label a ClassLabel (-1: none)."""
    import datasets

    exs = TASKS[task].load(data_dir, split)
    data = {cols[0]: [e.text_a for e in exs], **({cols[1]: [e.text_b for e in exs]} if len(cols) > 1 else {}),
            "label": [-1 if e.label is None else e.label for e in exs]}
    return datasets.Dataset.from_dict(data, features=datasets.Features(
        {**{c: datasets.Value("string") for c in cols}, "label": datasets.ClassLabel(names=classes)}))


def tsv_dataset(path: Path):
    """A datasets.Dataset of a TSV's columns as strings (read by the TSV reader the custom task uses)."""
    import datasets

    head, recs = read_dicts(path, "\t")
    return datasets.Dataset.from_dict({c: [r[c] for _, r in recs] for c in head})


def rows(exs: list) -> list[tuple]:
    return [(e.text_a, e.text_b, e.label, e.meta) for e in exs]


def assert_like_glue(got: Path, data_dir: Path, task: str, cols: list[str], classes: list[str], counts: tuple):
    """The custom task on ``got`` gives the registry task's Examples of its TSVs: texts, labels, classes, counts."""
    t, folder = task_for("custom", got, text_col=cols[0], text_pair_col=cols[1] if len(cols) > 1 else None)
    assert (t.kind, t.label_names) == ("entailment" if len(cols) > 1 else "classification", classes)
    for split, n in zip(("train", "dev", "test"), counts):
        want = [(e.text_a, e.text_b, e.label) for e in TASKS[task].load(data_dir, split)]
        assert [(e.text_a, e.text_b, e.label) for e in t.load(folder, split)] == want and len(want) == n, split
    return t, folder


def test_datasetdict_folders_read_like_the_tsvs(tmp_path, data_dir):
    import datasets

    for task, cols, classes, counts in (("sst2", ["sentence"], SST_CLASSES, (67349, 872, 1821)),
                                        ("mrpc", ["sentence1", "sentence2"], MRPC_CLASSES, (3668, 408, 1725))):
        dd = datasets.DatasetDict({ours: glue_dataset(data_dir, task, glue, cols, classes) for ours, glue in
                                   (("train", "train"), ("validation", "dev"), ("test", "test"))})
        dd.save_to_disk(tmp_path / task)
        t, folder = assert_like_glue(tmp_path / task, data_dir, task, cols, classes, counts)
        assert [len(x) for x in t.fit_splits(folder)[:2]] == list(counts[:2])  # dev is the validation split
        assert all(e.label is None for e in t.load(folder, "test"))  # -1: no label


def test_single_dataset_folder_reads_like_a_single_file(tmp_path, data_dir):
    """One Dataset's save_to_disk folder is read for every split, epochs selected on a held-out part of it."""
    tsv = data_dir / "glue" / "RTE" / "train.tsv"
    tsv_dataset(tsv).save_to_disk(tmp_path / "rte")
    (want, want_dir), (got, got_dir) = task_for("custom", tsv, **RTE), task_for("custom", tmp_path / "rte", **RTE)
    assert (got.kind, got.label_names, got.dev_split) == (want.kind, want.label_names, want.dev_split) == (
        "entailment", ["entailment", "not_entailment"], HELDOUT)
    (tr, dv, names), (tr2, dv2, names2) = want.fit_splits(want_dir), got.fit_splits(got_dir)
    assert (rows(tr2), rows(dv2), names2) == (rows(tr), rows(dv), names) and len(tr) + len(dv) == 2490
    assert names == ("train", "heldout (249 of train)") and extra_splits(got, got_dir, names) == {}


def test_parquet_files_and_the_hub_layout_read_like_the_tsvs(tmp_path, data_dir, monkeypatch):
    import datasets

    rte = data_dir / "glue" / "RTE"
    for split, name in (("train", "train"), ("dev", "validation"), ("test", "test")):
        tsv_dataset(rte / f"{split}.tsv").to_parquet(tmp_path / "rte" / f"{name}.parquet")
    want, want_dir = task_for("custom", rte, **RTE)  # the TSVs through the custom task: strings, inferred classes
    got, got_dir = task_for("custom", tmp_path / "rte", **RTE)
    assert (got.kind, got.label_names) == (want.kind, want.label_names) == ("entailment", ["entailment",
                                                                                       "not_entailment"])
    for split, n in (("train", 2490), ("dev", 277), ("test", 3000)):
        exs = want.load(want_dir, split)
        assert rows(got.load(got_dir, split)) == rows(exs) and len(exs) == n, split
    one, one_dir = task_for("custom", tmp_path / "rte" / "train.parquet", **RTE)  # a single parquet file
    assert one.dev_split == HELDOUT and rows(one.load(one_dir, "train")) == rows(want.load(want_dir, "train"))
    hub = tmp_path / "sst2" / "data"  # the Hub's layout, train in two shards, the ClassLabel in the parquet metadata
    train = glue_dataset(data_dir, "sst2", "train", ["sentence"], SST_CLASSES)
    for i in range(2):
        train.shard(2, i, contiguous=True).to_parquet(hub / f"train-0000{i}-of-00002.parquet")
    for ours, glue in (("validation", "dev"), ("test", "test")):
        part = glue_dataset(data_dir, "sst2", glue, ["sentence"], SST_CLASSES)
        part.to_parquet(hub / f"{ours}-00000-of-00001.parquet")
    assert_like_glue(hub.parent, data_dir, "sst2", ["sentence"], SST_CLASSES, (67349, 872, 1821))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))  # hf: a local folder
    t, _ = assert_like_glue(f"hf:{hub.parent}", data_dir, "sst2", ["sentence"], SST_CLASSES, (67349, 872, 1821))
    assert Path(t.folder).is_relative_to(tmp_path / "cache")  # read from the Arrow files load_dataset wrote


def test_dataset_errors_name_what_was_there(tmp_path, data_dir):
    """A missing column names the folder and the columns found; parquet bytes never reach the text decoder; an
    empty folder lists what was looked for; hf: offline names the call tried."""
    import datasets

    sst = glue_dataset(data_dir, "sst2", "dev", ["sentence"], SST_CLASSES)
    datasets.DatasetDict(train=sst).save_to_disk(tmp_path / "dd")
    with pytest.raises(TaskDataError) as e:
        task_for("custom", tmp_path / "dd")
    assert str(e.value).startswith(f"{tmp_path / 'dd' / 'train'}: no column(s) ['text']; its columns are "
                                   f"['sentence', 'label']; expected CSV/TSV with a header, JSON lines, parquet")
    sst.to_parquet(tmp_path / "p" / "train.csv")  # parquet bytes, a text name
    with pytest.raises(TaskDataError, match=r"train.csv: a parquet file, not text; name it .parquet"):
        task_for("custom", tmp_path / "p" / "train.csv")
    (tmp_path / "p" / "train.parquet").write_text("text,label\nx,1\n")  # text bytes, a parquet name
    with pytest.raises(TaskDataError, match=r"train.parquet: not readable as a .parquet table \(Arrow"):
        task_for("custom", tmp_path / "p" / "train.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskDataError) as e:
        TASKS["custom"].fit_splits(tmp_path / "empty")
    assert all(f" {p}" in str(e.value) for p in ("train.csv,", "train.parquet,", "data/train-*.parquet,",
                                                  "train/state.json", "state.json ("))
    with pytest.raises(TaskDataError) as e:
        task_for("custom", "hf:nyu-mll/glue:sst2")  # conftest sets HF_HUB_OFFLINE=1
    assert str(e.value).startswith("--data-dir hf:nyu-mll/glue:sst2: datasets.load_dataset('nyu-mll/glue', "
                                   "'sst2') failed (") and "HF_HUB_OFFLINE" in str(e.value)


def test_cli_stops_on_bad_datasets_input_before_any_model(tmp_path, data_dir):
    import datasets

    sst = glue_dataset(data_dir, "sst2", "dev", ["sentence"], SST_CLASSES)
    datasets.DatasetDict(train=sst, validation=sst).save_to_disk(tmp_path / "dd")
    assert finetune_error(tmp_path, tmp_path / "dd").startswith(
        f"{tmp_path / 'dd' / 'train'}: no column(s) ['text']; its columns are ['sentence', 'label']")
    msg = finetune_error(tmp_path, "hf:nyu-mll/glue:sst2")
    assert msg.startswith("--data-dir hf:nyu-mll/glue:sst2: datasets.load_dataset('nyu-mll/glue', 'sst2') failed") \
        and "HF_HUB_OFFLINE" in msg


@pytest.mark.slow
def test_finetune_from_a_save_to_disk_folder(tmp_path, data_dir, tok_dir):
    """A few steps on a DatasetDict of real MRPC pairs: rc 0, dev metrics, its ClassLabel names in the model."""
    import datasets

    cols = ["sentence1", "sentence2"]
    parts = {s: glue_dataset(data_dir, "mrpc", g, cols, MRPC_CLASSES).select(range(n)) for s, g, n in
             (("train", "train", 48), ("validation", "dev", 16), ("test", "test", 8))}
    datasets.DatasetDict(parts).save_to_disk(tmp_path / "mrpc")
    run = tmp_path / "run"
    gptscale("finetune", "--task", "custom", "--data-dir", tmp_path / "mrpc", "--text-col", "sentence1",
             "--text-pair-col", "sentence2", "--init", "none", f"--data.tokenizer={tok_dir}", "--finetune.epochs=1",
             f"--train.run_dir={run}", *TINY)
    m = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "model" / "gptscale_task.json").read_text())
    assert m["primary"] == "accuracy" and 0.0 <= m["best"]["accuracy"] <= 1.0 and m["dev_split"] == "dev"
    assert (meta["kind"], meta["label_names"]) == ("entailment", MRPC_CLASSES)
    preds = (run / "predictions_dev.tsv").read_text().splitlines()[1:]
    gold = [MRPC_CLASSES[y] for y in parts["validation"]["label"]]
    assert len(preds) == 16 and [r.split("\t")[3] for r in preds] == gold
    assert len((run / "submission" / "custom.tsv").read_text().splitlines()) == 1 + 8  # the unlabelled test split
