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
                            f"CSV/TSV with a header, or JSON lines, with columns ['text', 'label'] (label optional "
                            f"on test); set --text-col / --text-pair-col / --label-col to the file's column names")
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
