"""The Hub path of the task loaders: column maps against real `datasets` objects, `datasets.load_dataset` on
a local Hub-layout folder giving the same examples as the local files, and the error when both fail; the
per-task rules the registry sets as Task fields (Hub columns, dropped unlabelled rows, submission digits)."""

import dataclasses
import os
import subprocess
import sys

import datasets
import pytest

from gptscale.tasks import TASKS, Example, TaskDataError, get_task, load_task
from gptscale.tasks.hub import hub_examples, load_from_hub
from gptscale.tasks.outputs import write_submission
from helpers import REPO


def test_glue_rows_map_like_local_files(tmp_path, data_dir):
    rte = get_task("rte")
    local = rte.load(data_dir, "dev")
    rows = {"sentence1": [e.text_a for e in local], "sentence2": [e.text_b for e in local],
            "label": [e.label for e in local], "idx": list(range(len(local)))}
    folder = tmp_path / "rte_hub"
    folder.mkdir()
    datasets.Dataset.from_dict(rows).to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    hub = load_from_hub(rte, "dev", source=(str(folder), None))  # the real load_dataset, on a local folder
    assert [(e.text_a, e.text_b, e.label) for e in hub] == [(e.text_a, e.text_b, e.label) for e in local]


def test_test_split_labels_and_special_layouts():
    rte = get_task("rte")
    ex = hub_examples(rte, datasets.Dataset.from_dict(
        {"sentence1": ["a"], "sentence2": ["b"], "label": [-1], "idx": [7]}), "x")
    assert ex[0].label is None and ex[0].meta["index"] == 7
    snli = hub_examples(get_task("snli"), [{"premise": "p", "hypothesis": "h", "label": -1},
                                           {"premise": "p", "hypothesis": "h", "label": 2}], "x")
    assert [e.label for e in snli] == [2]  # no gold label: dropped
    sts = hub_examples(get_task("stsb"), [{"sentence1": "a", "sentence2": "b", "label": 3.8, "idx": 0}], "x")
    assert sts[0].label == pytest.approx(3.8)
    race = hub_examples(get_task("race"), [{"article": "art", "question": "q?", "options": ["w", "x", "y", "z"],
                                            "answer": "C", "example_id": "r1"}], "x")
    assert (race[0].text_a, race[0].text_b, race[0].choices, race[0].label) == ("art", "q?", ["w", "x", "y", "z"], 2)
    sc = hub_examples(get_task("story_cloze"), [{
        "story_id": "s", "input_sentence_1": "A.", "input_sentence_2": "B.", "input_sentence_3": "C.",
        "input_sentence_4": "D.", "sentence_quiz1": "E1.", "sentence_quiz2": "E2.", "answer_right_ending": 2}], "x")
    assert (sc[0].text_a, sc[0].choices, sc[0].label) == ("A. B. C. D.", ["E1.", "E2."], 1)
    sci = hub_examples(get_task("scitail"), [{"premise": "p", "hypothesis": "h", "label": "neutral"}], "x")
    assert sci[0].label == 1
    with pytest.raises(TaskDataError, match="no column 'sentence2'"):
        hub_examples(rte, [{"sentence1": "a", "label": 0}], "somewhere")


def test_hub_rules_are_task_fields():
    assert [n for n, t in TASKS.items() if not t.hub_columns] == ["custom"]
    assert all(t.hub[0] for t in TASKS.values() if t.hub_columns)
    with pytest.raises(TaskDataError, match="task custom has no Hub column map"):
        hub_examples(get_task("custom"), [{"text": "a", "label": 0}], "x")
    assert [n for n, t in TASKS.items() if t.drop_unlabelled] == ["snli"]
    rows = [{"premise": "p", "hypothesis": "h", "label": -1, "idx": 0},
            {"premise": "p", "hypothesis": "h", "label": 1, "idx": 1}]
    assert [e.label for e in hub_examples(get_task("mnli"), rows, "x")] == [None, 1]  # GLUE test rows stay
    assert [e.label for e in hub_examples(get_task("snli"), rows, "x")] == [1]
    dropping = dataclasses.replace(get_task("rte"), drop_unlabelled=True)
    assert hub_examples(dropping, [{"sentence1": "a", "sentence2": "b", "label": -1, "idx": 0}], "x") == []
    shifted = dataclasses.replace(get_task("rte"), hub_label_offset=1)
    assert hub_examples(shifted, [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}], "x")[0].label == 1


def test_snli_rows_without_gold_label_are_dropped(tmp_path):
    d = tmp_path / "glue" / "SNLI"
    d.mkdir(parents=True)
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel1\tgold_label\n"
                               "0\ta\tb\tneutral\tneutral\n1\tc\td\t-\t-\n2\te\tf\tentailment\tentailment\n")
    ex = load_task("snli", tmp_path, "dev")
    assert [(e.text_a, e.label, e.meta["index"]) for e in ex] == [("a", 1, 0), ("e", 0, 2)]


def test_submission_digits_or_label_names(tmp_path):
    assert {n for n, t in TASKS.items() if t.submission_digits} == {"cola", "sst2", "mrpc", "qqp", "wnli"}
    exs = [Example("x", meta={"index": 7}), Example("y", meta={"index": 8})]
    for name, preds, want in (("sst2", [1, 0], ["1", "0"]), ("rte", [1, 0], ["not_entailment", "entailment"]),
                              ("wnli", [1, 0], ["1", "0"]), ("stsb", [2.5, 0.25], ["2.500", "0.250"])):
        write_submission(tmp_path / f"{name}.tsv", TASKS[name], exs, preds)
        rows = (tmp_path / f"{name}.tsv").read_text().splitlines()
        assert rows == ["index\tprediction", f"7\t{want[0]}", f"8\t{want[1]}"], name


def test_offline_missing_files_is_a_local_error(tmp_path):
    with pytest.raises(TaskDataError, match="no file found") as e:
        get_task("rte").load(tmp_path, "dev")  # conftest sets HF_HUB_OFFLINE=1: no Hub attempt
    assert "Hub" not in str(e.value)


def test_online_fallback_failure_names_both(tmp_path):
    """Online (offline flags unset) with an unreachable Hub: the error names the local layout and the Hub call."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), HF_HUB_ETAG_TIMEOUT="2",
               HF_HUB_DOWNLOAD_TIMEOUT="2")
    code = ("from gptscale.tasks import get_task, TaskDataError\n"
            f"try:\n    get_task('rte').load({str(tmp_path)!r}, 'dev')\n"
            "except TaskDataError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                       cwd=str(REPO), check=False)
    assert "no file found" in p.stdout and "datasets.load_dataset('nyu-mll/glue', 'rte')" in p.stdout, \
        p.stdout + p.stderr[-2000:]
