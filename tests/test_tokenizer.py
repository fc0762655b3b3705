"""Tokenizer training, loading (ours and Hugging Face folders), round trips and the CLI, on real text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gptscale.data.corpus import CorpusError, read_source, strip_gutenberg
from gptscale.tokenizer import SPECIALS, Tokenizer, TokenizerError, cli_train, reservoir_sample, train_tokenizer

VOCAB = 1000
EXPECTED_IDS = {"pad": 0, "eod": 2, "start": 3, "delim": 4, "extract": 5}


@pytest.fixture(scope="module")
def tok(tmp_path_factory, gutenberg_files) -> Tokenizer:
    """BPE trained on the few small Gutenberg books, licence stripped."""
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer([str(f) for f in gutenberg_files], out, VOCAB, gutenberg=True, num_threads=2)


@pytest.fixture(scope="module")
def unseen_text(all_gutenberg_files) -> str:
    """~60 KB of a book the tokenizer never saw (Alice: curly quotes, dashes, digits in chapter numbers)."""
    alice = next(f for f in all_gutenberg_files if f.name == "11-0.txt")
    return next(read_source(str(alice), gutenberg=True)).text[:60_000]


def test_folder_and_special_ids(tok):
    folder = Path(tok.path)
    meta = json.loads((folder / "gptscale_tokenizer.json").read_text())
    assert meta["format"] == "gptscale-tokenizer" and meta["version"] == 1 and meta["type"] == "sentencepiece"
    assert meta["special_ids"] == EXPECTED_IDS and meta["special_tokens"] == SPECIALS
    assert meta["hash"] == hashlib.sha256((folder / "tokenizer.model").read_bytes()).hexdigest() == tok.hash
    assert meta["seed"] == 0 and meta["sample_sentences"] == 2_000_000 and len(meta["trained_on"]) == 4
    assert tok.to_json() == meta and tok.vocab_size == VOCAB
    assert (tok.pad_id, tok.eod_id, tok.start_id, tok.delim_id, tok.extract_id) == (0, 2, 3, 4, 5)
    assert sorted(p.name for p in folder.iterdir()) == [  # no temp files left
        "gptscale_tokenizer.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]


def test_round_trip_real_text(tok, unseen_text, gutenberg_files):
    ids = tok.encode(unseen_text)
    assert tok.decode(ids) == unseen_text
    assert len(ids) < len(unseen_text) / 2.0  # it learned real merges
    assert 1 not in ids and not set(ids) & set(EXPECTED_IDS.values())  # no unk, no specials
    paras = [p for p in unseen_text.split("\n\n") if p.strip()][:200]
    assert tok.decode_batch(tok.encode_batch(paras)) == paras
    assert tok.encode_batch(paras) == [tok.encode(p) for p in paras]
    book = next(read_source(str(gutenberg_files[0]), gutenberg=True)).text
    assert tok.decode(tok.encode(book)) == book
    concat = tok.encode(paras[0]) + tok.encode(paras[1])  # no dummy-prefix space: pieces concatenate
    assert tok.decode(concat) == paras[0] + paras[1]


def test_whitespace_digits_and_unseen_characters(tok):
    text = "  Two  spaces,\ttab\n\n\nnew lines; 1984 and 3.14159 \u201cquotes\u201d caf\u00e9 \U0001F600 \u6f22\u5b57 \u2713 \u00a0end "
    ids = tok.encode(text)
    assert tok.decode(ids) == text and 1 not in ids  # byte fallback, never <unk>
    digits = tok.encode("1984")
    assert len(digits) == 4 and [tok.decode([i]) for i in digits] == list("1984")  # split_digits
    emoji = tok.encode("\U0001F600")
    assert len(emoji) == 4 and tok.decode(emoji) == "\U0001F600"  # four UTF-8 byte pieces


def test_special_strings_in_plain_text_are_ordinary_text(tok):
    """Documented choice: control symbols. Literal '<|endoftext|>' in a document is tokenized as text (it
    cannot forge a document boundary) and round-trips; the special ids are inserted by the caller."""
    for name, s in SPECIALS.items():
        ids = tok.encode(f"before {s} after")
        assert EXPECTED_IDS[name] not in ids and tok.decode(ids) == f"before {s} after"
    a, b = "The gift.", " Of the magi."
    ids = tok.encode(a) + [tok.eod_id] + tok.encode(b) + [tok.pad_id]
    assert tok.decode(ids) == a + "<|endoftext|>" + b + "<pad>"
    assert tok.decode([tok.start_id, tok.delim_id, tok.extract_id]) == "<|start|><|delim|><|extract|>"


def test_deterministic_training(tmp_path, gutenberg_files, tok):
    inputs = [str(f) for f in gutenberg_files]
    again = train_tokenizer(inputs, tmp_path / "again", VOCAB, gutenberg=True, num_threads=1)
    assert (Path(again.path) / "tokenizer.model").read_bytes() == (Path(tok.path) / "tokenizer.model").read_bytes()
    assert again.hash == tok.hash  # same inputs + seed, other thread count: same bytes
    kw = dict(gutenberg=True, sample_sentences=800)
    s0 = train_tokenizer(inputs, tmp_path / "s0", VOCAB, seed=0, **kw)
    s0b = train_tokenizer(inputs, tmp_path / "s0b", VOCAB, seed=0, **kw)
    s1 = train_tokenizer(inputs, tmp_path / "s1", VOCAB, seed=1, **kw)
    assert s0.hash == s0b.hash != s1.hash != tok.hash  # the seed picks the line sample


def test_reservoir_sample_is_bounded_uniform_and_seeded():
    items = [str(i) for i in range(10_000)]
    sample, seen = reservoir_sample(iter(items), 100, seed=3)
    assert seen == 10_000 and len(sample) == 100 and len(set(sample)) == 100
    assert sample == reservoir_sample(iter(items), 100, seed=3)[0] != reservoir_sample(iter(items), 100, seed=4)[0]
    assert 3000 < sum(map(int, sample)) / 100 < 7000  # drawn from the whole stream, not its head
    assert reservoir_sample(iter(items[:5]), 100, seed=0) == (items[:5], 5)


def test_load_errors(tmp_path, tok):
    with pytest.raises(TokenizerError, match="nowhere.*no such directory"):
        Tokenizer.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="empty.*neither a gptscale gptscale_tokenizer.json nor Hugging Face"):
        Tokenizer.load(tmp_path / "empty")
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "gptscale_tokenizer.json").write_text((Path(tok.path) / "gptscale_tokenizer.json").read_text())
    with pytest.raises(TokenizerError, match="tokenizer.model is missing"):
        Tokenizer.load(edited)
    (edited / "tokenizer.model").write_bytes((Path(tok.path) / "tokenizer.model").read_bytes() + b"\0")
    with pytest.raises(TokenizerError, match="does not match the hash"):
        Tokenizer.load(edited)
    assert Tokenizer.load(tok.path).encode("The magi") == tok.encode("The magi")


def test_train_errors(tmp_path, gutenberg_files, data_dir):
    with pytest.raises(CorpusError, match=r"\*\.nothing.*matched no"):
        train_tokenizer([str(data_dir / "corpus" / "*.nothing")], tmp_path / "t", VOCAB)
    with pytest.raises(TokenizerError, match="too small"):
        train_tokenizer([str(gutenberg_files[0])], tmp_path / "t", 100)
    with pytest.raises(TokenizerError, match="Vocabulary size too high.*lower --vocab-size"):
        train_tokenizer([str(gutenberg_files[0])], tmp_path / "t", 60_000)
    blank = tmp_path / "blank.txt"
    blank.write_text("\r\n \n\n")
    with pytest.raises(TokenizerError, match="no text found"):
        train_tokenizer([str(blank)], tmp_path / "t", VOCAB)


# ---------------------------------------------------------------------------------- Hugging Face folder


def build_hf_tokenizer(folder: Path, shakespeare: Path, *, eos: str | None, extra: list[str]) -> None:
    """A tiny byte-level BPE trained on tinyshakespeare, saved as a transformers tokenizer folder."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = shakespeare.read_text(encoding="utf-8").splitlines()[:4000]
    core = HFTok(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ([eos] if eos else []) + extra
    core.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    kw = {"eos_token": eos} if eos else {}
    PreTrainedTokenizerFast(tokenizer_object=core, additional_special_tokens=extra, **kw).save_pretrained(folder)


def test_hf_folder_load(tmp_path, shakespeare):
    folder = tmp_path / "hf"
    build_hf_tokenizer(folder, shakespeare, eos="<|endoftext|>", extra=["<|delim|>"])
    hf = Tokenizer.load(folder)
    assert hf.to_json()["type"] == "huggingface" and hf.eod_id == hf.pad_id == 0  # no pad token: eod
    assert hf.delim_id == 1 and hf.start_id is None and hf.extract_id is None
    text = shakespeare.read_text(encoding="utf-8")[5000:9000] + " caf\u00e9 \U0001F600"
    ids = hf.encode(text)
    assert hf.decode(ids) == text and hf.encode_batch([text, "Romeo"]) == [ids, hf.encode("Romeo")]
    assert hf.decode(hf.encode("Exeunt") + [hf.eod_id]) == "Exeunt<|endoftext|>"
    assert hf.vocab_size == 600 and Tokenizer.load(folder).hash == hf.hash and len(hf.hash) == 64


def test_hf_folder_without_eos_is_an_error(tmp_path, shakespeare):
    folder = tmp_path / "hf_noeos"
    build_hf_tokenizer(folder, shakespeare, eos=None, extra=[])
    with pytest.raises(TokenizerError, match="no eos_token"):
        Tokenizer.load(folder)


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_train_end_to_end(tmp_path, data_dir, gutenberg_files, capsys):
    out = tmp_path / "cli_tok"
    pattern = str(data_dir / "corpus" / "gutenberg" / "pg1*.txt")
    rc = cli_train(["--input", str(gutenberg_files[0]), pattern, "--vocab-size", "800", "--out", str(out),
                    "--gutenberg", "--sample-sentences", "20000", "--seed", "7", "--threads", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"wrote {out}: vocab 800" in captured.out and "lines/s" in captured.err
    tok = Tokenizer.load(out)
    meta = tok.to_json()
    assert meta["seed"] == 7 and meta["sample_sentences"] == 20000 and str(gutenberg_files[0]) in meta["trained_on"]
    assert len(meta["trained_on"]) > 2 and all("gutenberg" in s for s in meta["trained_on"])
    body = strip_gutenberg(gutenberg_files[0].read_text(encoding="utf-8-sig").replace("\r\n", "\n"))
    assert tok.decode(tok.encode(body)) == body


def test_cli_train_bad_input(tmp_path, capsys):
    rc = cli_train(["--input", str(tmp_path / "nope" / "*.txt"), "--vocab-size", "800", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "gptscale tokenizer train: error:" in err and "nope" in err and "matched no" in err
    with pytest.raises(SystemExit):
        cli_train(["--input", "x.txt", "--vocab-size", "800", "--out", "o", "--errors", "ignore"])


def test_folder_loads_in_transformers_with_the_same_ids(tok, unseen_text):
    """The folder `gptscale tokenizer train` writes is a Hugging Face tokenizer folder: AutoTokenizer gives
    gptscale's ids on real text (default call, specials on), the same special ids, and the same text back."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok.path)
    paras = [p for p in unseen_text.split("\n\n") if p.strip()][:300]
    assert hf(paras)["input_ids"] == tok.encode_batch(paras)
    assert hf(unseen_text)["input_ids"] == tok.encode(unseen_text)
    assert (hf.pad_token_id, hf.eos_token_id) == (tok.pad_id, tok.eod_id)
    assert hf.convert_tokens_to_ids(["<|start|>", "<|delim|>", "<|extract|>"]) == [3, 4, 5]
    literal = "a literal <|endoftext|> and <|extract|> stay text"
    assert hf(literal)["input_ids"] == tok.encode(literal) and not {2, 5} & set(tok.encode(literal))
    ids = tok.encode(unseen_text[:5000]) + [tok.eod_id]
    assert hf.decode(ids) == tok.decode(ids)


def test_folders_written_before_still_load(tmp_path, tok, unseen_text):
    """An older tokenizer folder (metadata in HF's reserved tokenizer.json, no HF twin) loads as before."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "tokenizer.model").write_bytes((Path(tok.path) / "tokenizer.model").read_bytes())
    (old / "tokenizer.json").write_text((Path(tok.path) / "gptscale_tokenizer.json").read_text())
    loaded = Tokenizer.load(old)
    assert loaded.hash == tok.hash and loaded.hf is None
    assert loaded.encode(unseen_text[:20000]) == tok.encode(unseen_text[:20000])
