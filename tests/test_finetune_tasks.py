"""Every task fine-tunes end to end through the entry point on its real files (`gptscale finetune --task T`):
the 14 named tasks and `custom` in two layouts, one process, a tiny model, a few examples each.

SciTail and RACE have no train file in ../shared/data: they train on one local split and select on another
(`--finetune.train_split/dev_split`). IMDB is not in ../shared/data: its run reads an aclImdb folder made
of real SST-2 movie-review sentences. Story Cloze selects epochs on GPT-1's 374 held-out val stories and
scores the labelled test file.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gptscale.tasks import TASKS
from gptscale.tasks.predict import Predictor
from gptscale.tasks.registry import task_for
from helpers import REPO, TINY, child_env

pytestmark = pytest.mark.slow

SPLITS: dict[str, list[str]] = {
    "scitail": ["--finetune.train_split=dev", "--finetune.dev_split=test"],
    "race": ["--finetune.train_split=dev_middle", "--finetune.dev_split=dev_high"],
}
RUNS = [*(t for t in TASKS if t != "custom"), "custom", "custom_pair"]

DRIVER = """
import json, sys, traceback
from gptscale.finetune import main, resolve
from gptscale.runtime.dist import shutdown
out = {}
for name, argv in json.load(open(sys.argv[1])).items():
    try:
        main(resolve(argv))
        out[name] = "ok"
    except Exception:
        out[name] = traceback.format_exc()[-3000:]
shutdown()
json.dump(out, open(sys.argv[2], "w"))
"""


def sst2_rows(data_dir: Path, n: int) -> list[tuple[str, str]]:
    """(sentence, "0"|"1") of the first n SST-2 training rows."""
    return [(e.text_a, str(e.label)) for e in TASKS["sst2"].load(data_dir, "train")[:n]]


def imdb_folder(root: Path, data_dir: Path) -> Path:
    """aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt from real SST-2 sentences (IMDB is not shared here)."""
    for i, (text, lab) in enumerate(sst2_rows(data_dir, 240)):
        split = "train" if i < 200 else "test"
        d = root / "aclImdb" / split / ("pos" if lab == "1" else "neg")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}_{8 if lab == '1' else 2}.txt").write_text(text, encoding="utf-8")
    return root


def custom_files(root: Path, data_dir: Path) -> tuple[Path, Path]:
    """custom/: train.csv + validation.csv (review, sentiment neg|pos); pairs.jsonl: MRPC pairs, one file."""
    d = root / "custom"
    d.mkdir()
    rows = sst2_rows(data_dir, 120)
    for name, part in (("train.csv", rows[:80]), ("validation.csv", rows[80:])):
        with open(d / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["review", "sentiment"])
            w.writerows((t, "pos" if y == "1" else "neg") for t, y in part)
    pairs = root / "pairs.jsonl"
    mrpc = TASKS["mrpc"].load(data_dir, "train")[:100]
    pairs.write_text("".join(json.dumps({"s1": e.text_a, "s2": e.text_b, "same": ["no", "yes"][e.label]}) + "\n"
                             for e in mrpc))
    return d, pairs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok_dir, data_dir) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("tasks")
    custom_dir, pairs = custom_files(root, data_dir)
    common = ["--init", "none", f"--data.tokenizer={tok_dir}", "--finetune.train_samples=16",
              "--finetune.eval_samples=16", "--finetune.epochs=1", *TINY]
    plan: dict[str, list[str]] = {}
    for name in RUNS:
        task, data = name, str(data_dir)
        extra = SPLITS.get(name, [])
        if name == "imdb":
            data = str(imdb_folder(root / "imdb", data_dir))
        elif name == "custom":
            data, extra = str(custom_dir), ["--text-col", "review", "--label-col", "sentiment"]
        elif name == "custom_pair":
            task, data = "custom", str(pairs)
            extra = ["--text-col=s1", "--text-pair-col=s2", "--label-col=same", "--finetune.task_kind=similarity",
                     "--finetune.label_names=no,yes"]
        plan[name] = ["--task", task, "--data-dir", data, f"--train.run_dir={root / name}", *common, *extra]
    (root / "plan.json").write_text(json.dumps(plan))
    p = subprocess.run([sys.executable, "-c", DRIVER, str(root / "plan.json"), str(root / "status.json")],
                       capture_output=True, text=True, timeout=900, cwd=str(REPO), env=child_env(), check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return root, json.loads((root / "status.json").read_text())


@pytest.mark.parametrize("name", RUNS)
def test_every_task_finetunes_end_to_end(runs, name):
    root, status = runs
    assert status[name] == "ok", status[name]
    run = root / name
    m = json.loads((run / "metrics.json").read_text())
    task = TASKS.get(name, TASKS["custom"])
    meta = json.loads((run / "model" / "gptscale_task.json").read_text())
    assert m["primary"] == task.metrics[0] and list(m["best"])[1] == next(iter(m["splits"]["dev"])) == m["primary"]
    bound = (-1.0, 1.0) if m["primary"] in ("mcc", "pearson") else (0.0, 1.0)
    assert all(bound[0] <= v <= bound[1] for k, v in m["best"].items() if k != "epoch")
    rows = (run / "predictions_dev.tsv").read_text().splitlines()
    assert len(rows) == 1 + (10 if name == "custom_pair" else 16)  # header + every dev example scored (at most 16)
    if meta["kind"] != "regression":
        assert {r.split("\t")[1] for r in rows[1:]} <= set(meta["label_names"])
    if name in ("custom", "custom_pair"):
        assert meta["label_names"] == (["neg", "pos"] if name == "custom" else ["no", "yes"])
        assert meta["kind"] == ("classification" if name == "custom" else "similarity") and \
            meta["symmetric"] == (name == "custom_pair")
        assert m["dev_split"] == ("dev" if name == "custom" else "heldout (10 of train)")
    else:
        assert (meta["task"], meta["kind"], meta["num_labels"]) == (name, task.kind, task.num_labels)


def test_split_choices_reach_the_run(runs):
    root, _ = runs
    split = {n: json.loads((root / n / "metrics.json").read_text()) for n in ("scitail", "race", "story_cloze", "imdb")}
    assert (split["scitail"]["train_split"], split["scitail"]["dev_split"]) == ("dev", "test")
    assert (split["race"]["train_split"], split["race"]["dev_split"]) == ("dev_middle", "dev_high")
    assert "test" not in split["scitail"]["splits"]  # the split used for selection is not scored twice
    assert split["story_cloze"]["dev_split"] == "heldout (374 of train)"
    assert split["imdb"]["dev_split"] == "heldout (40 of train)"  # 2500 asked, at most a fifth of 200
    for n in ("story_cloze", "imdb"):  # the labelled test file gets metrics, not a submission
        assert set(split[n]["splits"]["test"]) == {"accuracy"}


def test_custom_pair_model_folder_predicts_like_its_run(runs):
    """The custom similarity model folder keeps its kind, labels and both-orderings input for `gptscale predict`."""
    root, _ = runs
    task, folder = task_for("custom", root / "pairs.jsonl", text_col="s1", text_pair_col="s2", label_col="same",
                            kind="similarity", label_names=["no", "yes"])
    dev = task.fit_splits(folder)[1]
    rows = [r.split("\t") for r in (root / "custom_pair" / "predictions_dev.tsv").read_text().splitlines()[1:]]
    got = Predictor(root / "custom_pair" / "model").predict(dev)
    assert [p for p, _ in got] == [r[1] for r in rows] and [r[3] for r in rows] == [["no", "yes"][e.label] for e in dev]
    assert [c for _, c in got] == pytest.approx([float(r[2]) for r in rows], abs=1e-5)
