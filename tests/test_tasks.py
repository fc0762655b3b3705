"""gptscale.tasks: loaders on the real shared files, the custom task, the shared file readers, GPT-1 input
transformations, collate, errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from gptscale.tasks import TASKS, Example, TaskDataError, collate, compute_metrics, encode_example, load_task
from gptscale.tasks.custom import custom_task
from gptscale.tasks.predict import PredictError, read_examples
from gptscale.tasks.readers import json_lines, read_dicts, read_rows
from gptscale.tasks.registry import task_for
from gptscale.tokenizer import Tokenizer

# task, split -> rows (README table), label counts where the labels are categorical
COUNTS = {
    ("rte", "train"): 2490, ("rte", "dev"): 277, ("rte", "test"): 3000,
    ("sst2", "train"): 67349, ("sst2", "dev"): 872, ("sst2", "test"): 1821,
    ("cola", "train"): 8551, ("cola", "dev"): 1043, ("cola", "test"): 1063,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("mrpc", "test"): 1725,
    ("stsb", "train"): 5749, ("stsb", "dev"): 1500, ("stsb", "test"): 1379,
    ("qnli", "dev"): 5463, ("qnli", "test"): 5463, ("qnli", "train"): 8999,
    ("wnli", "train"): 635, ("wnli", "dev"): 71, ("wnli", "test"): 146,
    ("mnli", "train"): 8999, ("mnli", "dev"): 1000, ("mnli", "kshot16_train"): 48, ("mnli", "kshot16_dev"): 48,
    ("snli", "train_9k_sample"): 8999, ("snli", "dev_1k_sample"): 1000, ("snli", "kshot16_train"): 48,
    ("snli", "kshot16_dev"): 48,
    ("qqp", "train"): 8999, ("qqp", "dev"): 1000, ("qqp", "kshot16_train"): 32, ("qqp", "kshot16_dev"): 32,
    ("scitail", "dev"): 1304, ("scitail", "test"): 2126,
    ("race", "dev"): 1436 + 3451, ("race", "test"): 1436 + 3498,
    ("story_cloze", "val"): 1871, ("story_cloze", "test"): 1871,
}


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> Tokenizer:
    return Tokenizer.load(tok_dir)


@pytest.fixture(scope="module")
def loaded(data_dir: Path) -> dict[tuple[str, str], list[Example]]:
    return {key: TASKS[key[0]].load(data_dir, key[1]) for key in COUNTS}


def test_row_counts_and_labels_of_every_local_file(loaded):
    for (name, split), n in COUNTS.items():
        ex = loaded[name, split]
        assert len(ex) == n, (name, split, len(ex))
        task = TASKS[name]
        labels = {e.label for e in ex}
        if split == "test" and name not in ("scitail", "race", "story_cloze"):
            assert labels == {None}, (name, split)
            assert all("index" in e.meta for e in ex)
            assert ex[0].meta["index"] == 0
        elif task.kind == "regression":
            assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
        else:
            assert labels == set(range(task.num_labels)), (name, split, labels)


def test_label_names_follow_glue():
    assert TASKS["rte"].label_names == ["entailment", "not_entailment"]
    assert TASKS["qnli"].label_names == ["entailment", "not_entailment"]
    assert TASKS["wnli"].label_names == ["not_entailment", "entailment"]
    assert TASKS["mnli"].label_names == ["entailment", "neutral", "contradiction"]
    assert TASKS["snli"].label_names == ["entailment", "neutral", "contradiction"]
    assert TASKS["cola"].label_names == ["unacceptable", "acceptable"]
    assert TASKS["mrpc"].metrics == ["f1", "accuracy"] and TASKS["qqp"].metrics == ["f1", "accuracy"]
    assert TASKS["cola"].metrics[0] == "mcc" and TASKS["stsb"].metrics == ["pearson", "spearman"]
    assert TASKS["rte"].hub == ("nyu-mll/glue", "rte")
    assert TASKS["mrpc"].symmetric and TASKS["stsb"].symmetric and TASKS["qqp"].symmetric
    assert not TASKS["rte"].symmetric


def test_spot_checked_rows(loaded):
    rte = loaded["rte", "dev"][0]
    assert rte.text_a.startswith("Dana Reeve, the widow") and rte.text_b == "Christopher Reeve had an accident."
    assert rte.label == 1 and rte.meta["index"] == 0                      # not_entailment
    cola = loaded["cola", "train"][0]                                     # no header: first line is data
    assert cola.text_a == "Our friends won't buy this analysis, let alone the next one we propose." and cola.label == 1
    assert loaded["cola", "dev"][-1].text_a                               # dev.tsv lacks a final newline
    mrpc = loaded["mrpc", "train"][0]                                     # header behind a UTF-8 BOM
    assert mrpc.label == 1 and mrpc.text_a.startswith("Amrozi accused his brother")
    assert mrpc.text_b.startswith("Referring to him as only \" the witness \"")  # bare quotes kept (QUOTE_NONE)
    sts = loaded["stsb", "train"][:2]
    assert (sts[0].text_a, sts[0].text_b, sts[0].label) == ("A plane is taking off.", "An air plane is taking off.",
                                                            5.0)
    assert sts[1].label == pytest.approx(3.8)
    sst = loaded["sst2", "dev"][0]
    assert sst.text_a == "it 's a charming and often affecting journey . " and sst.label == 1
    wnli = loaded["wnli", "dev"][1]
    assert wnli.text_b == "Susan did not answer." and TASKS["wnli"].label_names[wnli.label] == "entailment"
    mnli = loaded["mnli", "kshot16_train"][0]
    assert (mnli.text_a, mnli.text_b, mnli.label) == ("That's all right.", "That's fine.", 0)
    assert mnli.meta["index"] == 155219
    mnli_j = loaded["mnli", "train"][0]
    assert mnli_j.text_b == "We are especially sad this year because we lost a lot of people." and mnli_j.label == 0
    qqp = loaded["qqp", "kshot16_train"][0]
    assert qqp.text_b == "Why is having a baby a blessing?" and qqp.label == 1
    snli = loaded["snli", "train_9k_sample"][0]
    assert snli.text_b == "Two people leave a cave" and snli.label == 2
    sci = loaded["scitail", "dev"][0]
    assert sci.text_b.startswith("Replace another in a molecule") and sci.label == 1  # neutral
    qnli_t = loaded["qnli", "test"][0]
    assert qnli_t.text_a == "What organization is devoted to Jihad against Israel?" and qnli_t.label is None


def test_snli_rows_with_five_annotator_labels_use_gold_label_last(data_dir):
    # SNLI kshot rows carry label1..label5 (15 columns) under an 11-column header: gold_label is the last one
    ex = TASKS["snli"].load(data_dir, "kshot16_train")
    assert {e.label for e in ex} == {0, 1, 2} and all(e.text_b for e in ex)


def test_race_and_story_cloze(loaded):
    race = loaded["race", "dev"]
    assert all(len(e.choices) == 4 and e.label in range(4) for e in race)
    levels = [e.meta["level"] for e in race]
    assert levels.count("middle") == 1436 and levels.count("high") == 3451
    first = race[0]
    assert first.meta["level"] == "middle" and first.text_b == "HFMD is usually spread with   _  ."
    assert first.choices == ["feces", "feces of an infected person", "water", "mucus"] and first.label == 1
    sc = loaded["story_cloze", "val"][0]
    assert sc.text_a == ("Rick grew up in a troubled household. He never found good support in family, and turned "
                         "to gangs. It wasn't long before Rick got shot in a robbery. The incident caused him to turn "
                         "a new leaf.")
    assert sc.choices == ["He is happy now.", "He joined a gang."] and sc.label == 0
    assert all(len(e.choices) == 2 for e in loaded["story_cloze", "test"])


def test_race_metrics_per_level(loaded):
    assert [(n, t.accuracy_by) for n, t in TASKS.items() if t.accuracy_by] == [("race", ("level", ("middle", "high")))]
    race = loaded["race", "dev"]
    preds = [e.label if e.meta["level"] == "middle" else (e.label + 1) % 4 for e in race]
    m = compute_metrics(TASKS["race"], preds, race)
    assert list(m) == ["accuracy", "accuracy_middle", "accuracy_high"]
    assert m["accuracy_middle"] == 1.0 and m["accuracy_high"] == 0.0
    assert m["accuracy"] == pytest.approx(1436 / len(race))
    high = race[1436:]
    assert list(compute_metrics(TASKS["race"], [e.label for e in high], high)) == ["accuracy", "accuracy_high"]


def test_data_dir_forms(data_dir):
    a = load_task("rte", data_dir, "dev")
    b = load_task("rte", data_dir / "glue", "dev")
    c = load_task("rte", data_dir / "glue" / "RTE", "dev")
    assert a == b == c
    assert load_task("scitail", data_dir / "scitail", "dev")[0] == load_task("scitail", data_dir, "dev")[0]
    assert set(TASKS["mnli"].available_splits(data_dir)) == {"train", "dev", "train_9k_sample", "dev_1k_sample",
                                                           "kshot16_train", "kshot16_dev"}
    assert TASKS["mnli"].resolve(data_dir, "dev")[0][0].name == "dev_1k_sample_from_train.json"


# ---------------------------------------------------------------------------------------- errors


def test_missing_file_error_names_paths_and_flag(tmp_path):
    with pytest.raises(TaskDataError) as e:
        load_task("rte", tmp_path, "train")
    msg = str(e.value)
    assert str(tmp_path / "glue" / "RTE") in msg and "train.tsv" in msg and "--data-dir" in msg
    with pytest.raises(TaskDataError, match="no split 'x'; known: train, dev, test"):
        TASKS["rte"].load(tmp_path, "x")
    with pytest.raises(TaskDataError, match="unknown task"):
        load_task("glue", tmp_path, "train")


def test_wrong_columns_and_labels(tmp_path):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(TaskDataError, match=r"no column 'sentence1'.*expects: GLUE TSV with header: index sentence1 "
                                            r"sentence2 label") as e:
        load_task("rte", tmp_path, "train")
    assert str(d / "train.tsv") in str(e.value)
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(TaskDataError, match=r"dev.tsv:2: unknown label 'maybe'"):
        load_task("rte", tmp_path, "dev")
    (d / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tonly one column\n")
    with pytest.raises(TaskDataError, match=r"test.tsv:2: 2 columns, need 3"):
        load_task("rte", tmp_path, "test")
    s = tmp_path / "story_cloze"
    s.mkdir()
    (s / "val.csv").write_text("id,s1\nx,y\n")
    with pytest.raises(TaskDataError, match="InputSentence1"):
        load_task("story_cloze", tmp_path, "val")


# -------------------------------------------------------------------------------- imdb and custom


def test_fit_splits_heldout_and_overrides(data_dir, loaded):
    sc = TASKS["story_cloze"]
    train, dev, names = sc.fit_splits(data_dir)
    assert names == ("train", "heldout (374 of train)") and (len(train), len(dev)) == (1497, 374)  # GPT-1's split

    def ids(xs: list[Example]) -> list[str]:
        return [e.meta["id"] for e in xs]

    assert sorted(ids(train) + ids(dev)) == sorted(ids(loaded["story_cloze", "val"]))  # disjoint, nothing lost
    assert ids(sc.fit_splits(data_dir)[1]) == ids(dev)  # fixed seed: every run selects on the same stories
    train, dev, names = TASKS["race"].fit_splits(data_dir, "dev_middle", "dev_high")
    assert names == ("dev_middle", "dev_high") and (len(train), len(dev)) == (1436, 3451)
    assert len(TASKS["rte"].fit_splits(data_dir, dev_split="heldout")[1]) == 249  # a tenth of 2490
    with pytest.raises(TaskDataError, match="the dev split 'dev' is the training split"):
        TASKS["rte"].fit_splits(data_dir, "dev", "dev")
    with pytest.raises(TaskDataError, match=r"scitail_1.0_train.tsv.*Splits present there: dev, test; .*"
                                            r"--finetune.train_split=SPLIT"):
        TASKS["scitail"].fit_splits(data_dir)


def test_imdb_local_layouts(tmp_path):
    acl = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for lab, txt in (("pos", "great film"), ("neg", "awful film")):
            (acl / split / lab).mkdir(parents=True)
            (acl / split / lab / f"3_{9 if lab == 'pos' else 2}.txt").write_text(f"{txt} {split}")
            (acl / split / lab / f"10_{8 if lab == 'pos' else 1}.txt").write_text(f"{txt} two")
    ex = load_task("imdb", tmp_path, "train")
    assert [(e.text_a, e.label) for e in ex] == [("awful film train", 0), ("awful film two", 0),
                                                 ("great film train", 1), ("great film two", 1)]
    assert ex[0].meta["rating"] == 2
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    hf = tmp_path / "hf" / "plain_text"
    hf.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["bad", "good"], "label": [0, 1]}), hf / "test-00000-of-00001.parquet")
    ex = load_task("imdb", tmp_path / "hf", "test")
    assert [(e.text_a, e.label) for e in ex] == [("bad", 0), ("good", 1)]
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text('text,label\n"fine, really",1\n')
    assert load_task("imdb", tmp_path / "csv", "train")[0].text_a == "fine, really"


def test_custom_task(tmp_path):
    (tmp_path / "train.csv").write_text("sent,other,y\nhello,there,pos\nbye,now,neg\n")
    (tmp_path / "dev.jsonl").write_text(json.dumps({"sent": "a", "other": "b", "y": "pos"}) + "\n")
    task = custom_task(text_col="sent", text_pair_col="other", label_col="y")
    ex = task.load(tmp_path, "train")  # labels inferred from the train file for the load ...
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [("hello", "there", 1), ("bye", "now", 0)]
    assert (task.kind, task.label_names) == ("?", [])  # ... the task itself unchanged
    full = task.with_labels(tmp_path)
    assert (full.kind, full.label_names, full.num_labels, full.metrics) == ("entailment", ["neg", "pos"], 2,
                                                                            ["accuracy"])
    assert full.with_labels(tmp_path) is full and full.load(tmp_path, "dev")[0].label == 1
    (tmp_path / "r.tsv").write_text("text\tscore\nx\t0.5\ny\t4\n")
    r, folder = task_for("custom", tmp_path / "r.tsv", label_col="score")
    assert folder == tmp_path and r.kind == "regression" and r.metrics[0] == "pearson" and r.dev_split == "heldout"
    assert [e.label for e in r.load(folder, "train")] == [0.5, 4.0]
    assert load_task("custom", tmp_path / "r.tsv", "test", label_col="score")[1].label == 4.0
    with pytest.raises(TaskDataError, match=r"no column\(s\) \['txt', 'label'\]; its header has \['sent', 'other', "
                                            r"'y'\].*--text-col"):
        load_task("custom", tmp_path, "train", text_col="txt")
    with pytest.raises(TaskDataError, match=r"train.csv:3: unknown label 'neg'"):  # the file's own line number
        load_task("custom", tmp_path, "train", text_col="sent", label_col="y", label_names=["pos", "other"])


def test_custom_task_for_a_single_file_leaves_the_registry_default_alone(tmp_path):
    default = copy.deepcopy(TASKS["custom"])
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"s1": "a", "s2": "b", "same": ["no", "yes"][i % 2]}) + "\n" for i in range(20)))
    task, folder = task_for("custom", f, text_col="s1", text_pair_col="s2", label_col="same")
    train, dev, names = task.fit_splits(folder)
    assert (task.kind, task.label_names, task.dev_split) == ("entailment", ["no", "yes"], "heldout")
    assert {src.patterns for srcs in task.sources.values() for src in srcs} == {("pairs.jsonl",)}
    assert names == ("train", "heldout (2 of train)") and (len(train), len(dev)) == (18, 2)
    assert task_for("custom", f, text_col="s1", text_pair_col="s2", label_col="same")[0] is not task
    (tmp_path / "train.csv").write_text("text,label\nx,1\ny,0\n")
    assert [e.label for e in TASKS["custom"].load(tmp_path, "train")] == [1, 0]  # the default infers too ...
    assert TASKS["custom"] == default  # ... and stays as it was
    assert (default.kind, default.dev_split, default.sources["train"][0].patterns) == ("?", "dev", ("train.csv",))


# ------------------------------------------------------------------------------------ file readers


def test_shared_readers_name_file_and_line(tmp_path):
    t = tmp_path / "a.tsv"
    t.write_bytes('\ufeffh1\th2\n\nsay "hi\tthere\nshort\n'.encode())  # BOM, blank line, bare quote
    assert read_rows(t) == [(1, ["h1", "h2"]), (3, ['say "hi', "there"]), (4, ["short"])]
    with pytest.raises(TaskDataError, match=r"a.tsv:4: 1 fields, but the header \(line 1\) names 2 .*a tab inside"):
        read_dicts(t, "\t")  # a short (or long) row is an error at its line, not a silently filled record
    t.write_bytes('\ufeffh1\th2\n\nsay "hi\tthere\n'.encode())
    assert read_dicts(t, "\t")[1] == [(3, {"h1": 'say "hi', "h2": "there"})]
    (tmp_path / "a.csv").write_text('text,label\n"one, two",1\n')
    assert read_dicts(tmp_path / "a.csv") == (["text", "label"], [(2, {"text": "one, two", "label": "1"})])
    j = tmp_path / "a.jsonl"
    for body, err in ((b'{"x": 1}\n\n{"x": 2}\n{"x": \n', "a.jsonl:4: not a JSON line"),
                      (b'{"x": 1}\n[1, 2]\n', "a.jsonl:2: expected a JSON object, got list"),
                      (b'{"x": 1}\n{"x": "\xff"}\n', "a.jsonl:2: not UTF-8: byte 0xff at byte offset 16")):
        j.write_bytes(body)
        with pytest.raises(TaskDataError, match=err):
            json_lines(j)
    (tmp_path / "dev-middle.jsonl").write_text('{"article": "a", "questions": ["q"], "options": [["1", "2", "3", '
                                               '"4"]], "answers": ["B"], "id": "m1"}\n{"article": "b"}\n')
    with pytest.raises(TaskDataError, match=r"dev-middle.jsonl:2: expected a JSON object with article"):
        load_task("race", tmp_path, "dev_middle")


def test_predict_file_formats(tmp_path):
    f, c, j = tmp_path / "x.tsv", tmp_path / "x.csv", tmp_path / "x.jsonl"
    f.write_text("a man sleeps\ta person rests\n\nit rains\twater\n")
    assert [(e.text_a, e.text_b) for e in read_examples(f, pair=True)] == [("a man sleeps", "a person rests"),
                                                                            ("it rains", "water")]
    assert [e.text_b for e in read_examples(f, pair=False)] == [None, None]
    c.write_text('text,text_pair\n"good, really",fine\n')
    assert [(e.text_a, e.text_b) for e in read_examples(c, pair=True)] == [("good, really", "fine")]
    j.write_text(json.dumps({"text": "t", "text_pair": "p"}) + "\n" + json.dumps({"txt": "t"}) + "\n")
    with pytest.raises(PredictError, match=r"x.jsonl:2: expected a JSON object with \"text\""):
        read_examples(j, pair=False)
    f.write_text("one\ttwo\nonly one\n")
    with pytest.raises(PredictError, match=r"x.tsv:2: needs text<TAB>text_pair"):
        read_examples(f, pair=True)


# ------------------------------------------------------------------------------ transformations


def test_single_and_entailment_formats(tok):
    s, d, e = tok.start_id, tok.delim_id, tok.extract_id
    assert (s, d, e) == (3, 4, 5)
    ex = Example("The cat sat.", None, None, 1, {})
    assert encode_example(TASKS["sst2"], ex, tok, 64) == [[s] + tok.encode("The cat sat.") + [e]]
    ex = Example("A man is here.", "Someone is here.", None, 0, {})
    assert encode_example(TASKS["rte"], ex, tok, 64) == [
        [s] + tok.encode("A man is here.") + [d] + tok.encode("Someone is here.") + [e]]


def test_similarity_both_orderings(tok):
    s, d, e = tok.start_id, tok.delim_id, tok.extract_id
    a, b = tok.encode("first sentence"), tok.encode("the second one")
    for name in ("mrpc", "qqp", "stsb"):
        seqs = encode_example(TASKS[name], Example("first sentence", "the second one", None, 1, {}), tok, 64)
        assert seqs == [[s] + a + [d] + b + [e], [s] + b + [d] + a + [e]]


def test_multiple_choice_k_sequences(tok, loaded):
    s, d, e = tok.start_id, tok.delim_id, tok.extract_id
    sc = loaded["story_cloze", "val"][0]
    seqs = encode_example(TASKS["story_cloze"], sc, tok, 512)
    ctx = tok.encode(sc.text_a)
    assert seqs == [[s] + ctx + [d] + tok.encode(c) + [e] for c in sc.choices]
    ex = Example("The article.", "Which?", ["yes", "no", "maybe", "so"], 2, {})
    seqs = encode_example(TASKS["race"], ex, tok, 64)
    ctx = tok.encode("The article.") + tok.encode(" Which?")
    assert seqs == [[s] + ctx + [d] + tok.encode(c) + [e] for c in ex.choices]


@pytest.mark.parametrize("truncation", ["halves", "share"])
def test_truncation_fits_and_keeps_specials(tok, loaded, truncation):
    s, d, e = tok.start_id, tok.delim_id, tok.extract_id
    long_a = " ".join(["alpha beta gamma"] * 80)
    for max_len in (16, 33, 64):
        one = encode_example(TASKS["cola"], Example(long_a, None, None, 1, {}), tok, max_len, truncation)
        assert len(one[0]) == max_len and one[0][0] == s and one[0][-1] == e
        assert one[0][1:-1] == tok.encode(long_a)[:max_len - 2]
        for b in ("short", long_a):
            for name in ("rte", "mrpc"):
                for seq in encode_example(TASKS[name], Example(long_a, b, None, 0, {}), tok, max_len, truncation):
                    assert len(seq) <= max_len and seq[0] == s and seq[-1] == e and seq.count(d) == 1
        for ex in loaded["race", "dev"][:20]:
            seqs = encode_example(TASKS["race"], ex, tok, max_len, truncation)
            assert len(seqs) == 4
            assert all(len(q) <= max_len and q[0] == s and q[-1] == e and q.count(d) == 1 for q in seqs)
            ctxs = {tuple(q[:q.index(d)]) for q in seqs}
            assert len(ctxs) == 1  # every choice sees the same context
    # exact rules
    a, b = tok.encode(long_a), tok.encode("short")
    seq = encode_example(TASKS["rte"], Example(long_a, "short", None, 0, {}), tok, 32, truncation)[0]
    keep_a = 32 // 2 - 2 if truncation == "halves" else 32 - 3 - len(b)
    assert seq == [s] + a[:keep_a] + [d] + b + [e]
    # RACE keeps the question even when the article is cut
    ex = loaded["race", "dev"][0]
    q = tok.encode(" " + ex.text_b)
    seqs = encode_example(TASKS["race"], ex, tok, 64, truncation)
    assert seqs[0][:seqs[0].index(d)][-len(q):] == q


def test_collate_padding_extract_and_mask(tok):
    batch = [[[3, 10, 11, 5], [3, 12, 5]], [[3, 5], [3, 7, 8, 9, 10, 5]]]
    ids, pos, mask = collate(batch, pad_id=0)
    assert ids.shape == (2, 2, 6) and ids.dtype == torch.int64
    assert pos.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids[0, 0].tolist() == [3, 10, 11, 5, 0, 0]
    assert pos.tolist() == [[3, 2], [1, 5]]
    assert (ids.gather(2, pos.unsqueeze(-1)).squeeze(-1) == 5).all()
    assert mask[0, 1].tolist() == [True, True, True, False, False, False]
    assert mask.sum().item() == 4 + 3 + 2 + 6
    with pytest.raises(ValueError, match="different numbers"):
        collate([[[3, 5]], [[3, 5], [3, 5]]], 0)
    # real encodes go through too
    exs = [Example("x y", "z", None, 0, {}), Example("a much longer first text here", "b", None, 1, {})]
    enc = [encode_example(TASKS["mrpc"], x, tok, 32) for x in exs]
    ids, pos, mask = collate(enc, tok.pad_id)
    assert ids.shape[:2] == (2, 2) and (ids.gather(2, pos.unsqueeze(-1)) == tok.extract_id).all()
    assert (ids[~mask] == tok.pad_id).all()
