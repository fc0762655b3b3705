"""Shared fixtures: the real data folder (never copied into the repo) and a few Gutenberg books from it.

The data lives in ``<repo>/../shared/data``; ``GPTSCALE_DATA`` overrides that. A missing folder fails the
tests that need it (it does not skip them): tests on real data are the point.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SHARD_ARGS, run_cli

# Nothing in the tests may reach the Hugging Face hub (there is no network for it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
N_SMALL_BOOKS = 4


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder: $GPTSCALE_DATA, else <repo>/../shared/data."""
    env = os.environ.get("GPTSCALE_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "corpus" / "gutenberg").is_dir():
        pytest.fail(f"real test data not found at {path} (no corpus/gutenberg/ inside); "
                    f"set GPTSCALE_DATA to the shared data folder (the one with corpus/, glue/, ...)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def all_gutenberg_files(data_dir: Path) -> list[Path]:
    """Every Gutenberg book, sorted by name."""
    files = sorted((data_dir / "corpus" / "gutenberg").glob("*.txt"))
    if len(files) < N_SMALL_BOOKS:
        pytest.fail(f"expected the Gutenberg books in {data_dir / 'corpus' / 'gutenberg'}, found {len(files)}",
                    pytrace=False)
    return files


@pytest.fixture(scope="session")
def gutenberg_files(all_gutenberg_files: list[Path]) -> list[Path]:
    """The few smallest books (fast to read and train on), sorted by name. All: ``all_gutenberg_files``."""
    smallest = sorted(all_gutenberg_files, key=lambda p: (p.stat().st_size, p.name))[:N_SMALL_BOOKS]
    return sorted(smallest)


@pytest.fixture(scope="session")
def shakespeare(data_dir: Path) -> Path:
    """tinyshakespeare/input.txt."""
    path = data_dir / "corpus" / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.fail(f"{path} is missing from the shared data folder", pytrace=False)
    return path


# ------------------------------------------------------------------------------- shard sets

N_SHARD_BOOKS = 12


@pytest.fixture(scope="session")
def shard_books(all_gutenberg_files: list[Path]) -> list[Path]:
    """The 12 smallest Gutenberg books (~1 MB): enough text for a few dozen small shards."""
    return sorted(sorted(all_gutenberg_files, key=lambda p: (p.stat().st_size, p.name))[:N_SHARD_BOOKS])


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory, shard_books: list[Path]) -> Path:
    """A 2000-piece BPE tokenizer trained with `gptscale tokenizer train` on the shard books."""
    out = tmp_path_factory.mktemp("tok") / "tok"
    run_cli("tokenizer", "train", "--input", *map(str, shard_books), "--vocab-size", "2000", "--out", str(out),
            "--gutenberg")
    return out


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, shard_books: list[Path], tok_dir: Path) -> Path:
    """Shards of the shard books made with `gptscale shard` (seq_len 32, ~317 rows per shard)."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    run_cli("shard", "--input", *map(str, shard_books), "--tokenizer", str(tok_dir), "--out", str(out),
            *SHARD_ARGS, "--workers", "2")
    return out
