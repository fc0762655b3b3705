"""Safe checkpoint loading (gptscale.runtime.safeload) and Hugging Face export (gptscale.hf.export) on real DeepSpeed
checkpoints: written by tests/helpers_ckpt.py with 2 ranks (ZeRO-2 GPT-2-style, ZeRO-3 GPT-1-style, each
also reloaded through engine.load_checkpoint with install() applied) and with 1 rank (ZeRO-0, with a
tokenizer trained on the Gutenberg books). The checkpoint-writing script gathers the trained parameters
and their logits on a fixed input: the oracle for fp32_state_dict and for the exported folders.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gptscale.hf.export import ExportError, cli_export, export_checkpoint
from gptscale.runtime.checkpoint import CheckpointError, load_model, resolve
from gptscale.runtime.safeload import UnsafeCheckpointError, fp32_state_dict, safe_torch_load
from gptscale.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "tests" / "helpers_ckpt.py"
TAG = "step_00000003"
RUNS = {  # name -> (ranks, helper args)
    "z2": (2, ["--preset", "gpt2-tiny", "--ds-config", "ds_configs/zero2.json", "--verify-load"]),
    "z3": (2, ["--preset", "gpt1-tiny", "--ds-config", "ds_configs/zero3.json", "--verify-load"]),
    "z0": (1, ["--preset", "gpt2-tiny", "--ds-config", "ds_configs/zero0.json", "--vocab-size", "2000"]),
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def _command(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [sys.executable, str(HELPER), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
            str(HELPER), *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok_dir: Path) -> dict[str, Path]:
    """The three run folders, written concurrently (one DeepSpeed start each)."""
    root = tmp_path_factory.mktemp("runs")
    cmds = {}
    for name, (ranks, args) in RUNS.items():
        extra = ["--tokenizer", str(tok_dir)] if name == "z0" else []
        cmds[name] = _command(ranks, [*args, *extra, "--run-dir", str(root / name), "--steps", "3"])
    procs = {name: _start(cmd) for name, cmd in cmds.items()}
    for name, p in procs.items():
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:  # seen twice in ~30 runs while other DeepSpeed jobs ran on the machine: retry once
            warnings.warn(f"checkpoint run {name} exited {p.returncode}, retrying:\n{out[-2000:]}", stacklevel=1)
            shutil.rmtree(root / name, ignore_errors=True)
            out, _ = (p := _start(cmds[name])).communicate(timeout=300)
        if p.returncode != 0:
            pytest.fail(f"checkpoint run {name} exited {p.returncode}:\n{out[-4000:]}", pytrace=False)
    return {name: root / name for name in RUNS}


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _expected(run: Path) -> dict:
    return torch.load(run / "expected.pt", weights_only=True)


# ------------------------------------------------------------------------------------------ safeload


@pytest.mark.parametrize("name", list(RUNS))
def test_fp32_state_dict_equals_trained_parameters(runs, name):
    exp = _expected(runs[name])["params"]
    sd = fp32_state_dict(runs[name] / "checkpoints", TAG)
    assert set(sd) == set(exp)
    for k in exp:
        assert sd[k].dtype == torch.float32 and torch.equal(sd[k], exp[k]), k
    assert torch.equal(sd["lm_head.weight"], sd["wte.weight"])  # tied head under both names


@pytest.mark.parametrize("name", ["z2", "z3"])
def test_engine_load_checkpoint_goes_through_safe_engine(runs, name):
    """Model, optimizer and LR-scheduler states restored (one more step is bit-identical on both engines),
    and every file DeepSpeed read went through SafeCheckpointEngine."""
    for rank in range(2):
        r = json.loads((runs[name] / f"verify_rank{rank}.json").read_text())
        assert r["is_safe_engine"] and r["params_equal"] and r["loss_a"] == r["loss_b"], r
        assert r["client_step"] == 3
        assert r["module_only_equal"] is (True if name == "z3" else None)  # ZeRO-3 zero_to_fp32 path, safe too
        assert any(f.endswith("model_states.pt") for f in r["files"]), r["files"]
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in r["files"], r["files"]


def test_real_checkpoint_files_load_safely(runs):
    files = sorted(p for run in runs.values() for p in run.rglob("*.pt") if p.name != "expected.pt")
    needs_deepspeed = [p for p in files if torch.serialization.get_unsafe_globals_in_checkpoint(p)]
    assert needs_deepspeed, "expected some files with DeepSpeed classes (ZeroStageEnum, LossScaler)"
    for p in files:
        assert isinstance(safe_torch_load(p), dict)


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw-pickle"])
def test_malicious_file_is_refused(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"module": {"w": torch.zeros(2)}, "x": Payload(marker)}
    if fmt == "raw-pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_torch_load(path)
    assert str(path) in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    if fmt == "zip":  # the payload is live: an unrestricted load runs it
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_unlisted_class_is_named(tmp_path):
    import argparse

    path = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"ns\.pt.*argparse\.Namespace"):
        safe_torch_load(path)


def test_fp32_state_dict_never_unpickles_a_planted_shard(runs, tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / TAG).mkdir(parents=True)
    for f in (runs["z2"] / "checkpoints" / TAG).iterdir():
        (ckpts / TAG / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "pwned"
    shard = ckpts / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": Payload(marker)}, shard)
    with pytest.raises(UnsafeCheckpointError, match="zero_pp_rank_1"):
        fp32_state_dict(ckpts, TAG)
    assert not marker.exists()
    assert torch.load is torch.serialization.load  # safe_loading() restored torch.load


# -------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name,hf_class", [("z2", "GPT2LMHeadModel"), ("z3", "OpenAIGPTLMHeadModel"),
                                           ("z0", "GPT2LMHeadModel")])
def test_export_loads_in_transformers_with_trained_logits(runs, tmp_path, name, hf_class):
    from transformers import AutoModelForCausalLM

    out = export_checkpoint(runs[name], tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == hf_class
    exp = _expected(runs[name])
    with torch.no_grad():
        diff = (hf(exp["idx"]).logits - exp["logits"]).abs().max().item()
    assert diff <= 1e-5, diff
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folders left behind
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out / "model.safetensors").st_mode & 0o777 == 0o666 & ~mask  # shareable, not mkstemp's 0600


def test_resolve_run_checkpoints_and_tag_dirs(runs, tmp_path):
    run = runs["z3"]
    ckpts = run / "checkpoints"
    assert resolve(run) == (ckpts, TAG)
    assert resolve(ckpts) == (ckpts, TAG)
    assert resolve(ckpts / TAG) == (ckpts, TAG)
    assert resolve(run, tag=TAG) == (ckpts, TAG)
    model, meta = load_model(ckpts / TAG)
    assert meta["step"] == 3 and meta["world_size"] == 2 and meta["zero_stage"] == 3 and not model.training


def test_missing_checkpoints_are_clear_errors(runs, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        resolve(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=f"{tmp_path}: no complete checkpoint here"):
        resolve(tmp_path)
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "step_00000099").mkdir(parents=True)  # a save that did not finish: no gptscale.json
    (ckpts / "latest").write_text("step_00000099")
    with pytest.raises(CheckpointError, match="no complete checkpoint here \\(step_00000099 lack gptscale.json"):
        resolve(tmp_path / "run")
    with pytest.raises(CheckpointError, match="step_00000099.*missing or incomplete"):
        resolve(tmp_path / "run", tag="step_00000099")
    with pytest.raises(CheckpointError, match="--tag 'step_1'"):
        resolve(runs["z2"] / "checkpoints" / TAG, tag="step_1")


def test_exported_tokenizer_encodes_like_ours(runs, tmp_path, tok_dir, all_gutenberg_files, shakespeare):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    out = export_checkpoint(runs["z0"], tmp_path / "hf")
    ours = Tokenizer.load(tok_dir)
    hf = AutoTokenizer.from_pretrained(str(out))
    texts = _real_lines(all_gutenberg_files[::10], 300) + _real_lines([shakespeare], 500) + TRICKY
    texts.append(all_gutenberg_files[0].read_text(encoding="utf-8")[:100_000])  # a long document, CRLF
    ids = ours.encode_batch(texts)
    pieces = {p for x in ids for p in hf.convert_ids_to_tokens(x)}
    assert sum(len(x) for x in ids) > 50_000 and any(p.startswith("<0x") for p in pieces)  # byte fallback used
    assert hf(texts, add_special_tokens=False)["input_ids"] == ids
    assert hf(texts[:50])["input_ids"] == ids[:50]  # no BOS/EOS added by default either
    assert [hf.decode(x) for x in ids] == [ours.decode(x) for x in ids]
    assert (hf.eos_token_id, hf.pad_token_id) == (ours.eod_id, ours.pad_id)
    cfg, gen = AutoConfig.from_pretrained(str(out)), GenerationConfig.from_pretrained(str(out))
    assert (cfg.eos_token_id, cfg.pad_token_id, gen.eos_token_id, gen.pad_token_id) == (2, 0, 2, 0)
    assert Tokenizer.load(out).encode(texts[0]) == ids[0]  # our loader reads it as an HF folder
    assert json.loads((out / "gptscale_tokenizer.json").read_text())["hash"] == ours.hash
    assert (out / "tokenizer.model").read_bytes() == (tok_dir / "tokenizer.model").read_bytes()
    # a tokenizer that is already a Hugging Face folder (here: that export) is copied as it is
    again = export_checkpoint(runs["z0"], tmp_path / "hf2", tokenizer=out)
    assert AutoTokenizer.from_pretrained(str(again))(texts[:200], add_special_tokens=False)["input_ids"] == ids[:200]
    assert AutoConfig.from_pretrained(str(again)).eos_token_id == ours.eod_id


TRICKY = [
    "Digits 0123456789, 3.14159 and 1,000,000 -- 2024-01-31.",
    "café naïve Ωmega — “curly” ‘quotes’ … ½ ß Æsir",
    "byte fallback only: 😀🚀 中文字符 テスト ✓ \u2603 \U0001f9ea",
    "literal specials stay text: <|endoftext|> <pad> <unk> <|start|> <|delim|> <|extract|>",
    "   leading spaces, trailing spaces   ", "\ttabs\tand\nnewlines\n\n", "a" * 500, "",
    "\u00a0no-break\u2009thin\u200bzero-width", "<0x41> looks like a byte piece",
]


def _real_lines(files: list[Path], per_file: int) -> list[str]:
    lines: list[str] = []
    for f in files:
        text = f.read_text(encoding="utf-8").replace("\r\n", "\n")
        lines += [ln for ln in text.split("\n") if ln.strip()][200:200 + per_file]
    return lines


def test_failed_export_leaves_nothing_half_written(runs, tmp_path, tok_dir):
    """The tokenizer step fails after the model files were written: no folder at --out, no temp left, and
    an existing --out (with --overwrite) is kept as it was."""
    bad_tok = tmp_path / "tok"
    bad_tok.mkdir()
    (bad_tok / "gptscale_tokenizer.json").write_bytes((tok_dir / "gptscale_tokenizer.json").read_bytes())
    (bad_tok / "tokenizer.model").write_bytes((tok_dir / "tokenizer.model").read_bytes()[:-7] + b"corrupt")
    out = tmp_path / "exports" / "hf"
    with pytest.raises(ExportError, match="sha256"):
        export_checkpoint(runs["z0"], out, tokenizer=bad_tok)
    assert list((tmp_path / "exports").iterdir()) == []
    export_checkpoint(runs["z0"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match="sha256"):
        export_checkpoint(runs["z0"], out, overwrite=True, tokenizer=bad_tok)
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["hf"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_refuses_mismatched_tokenizer(runs, tmp_path, tok_dir):
    with pytest.raises(ExportError, match="2000 ids but the model's vocab_size is 512"):
        export_checkpoint(runs["z2"], tmp_path / "hf", tokenizer=tok_dir)
    assert not (tmp_path / "hf").exists()


def test_cli(runs, tmp_path, capsys):
    out = tmp_path / "hf"
    assert cli_export([str(runs["z2"]), "--out", str(out), "--tag", TAG]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert cli_export([str(runs["z2"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_export([str(runs["z2"]), "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert cli_export([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptscale export: error:") and str(tmp_path / "missing") in err


def test_overwrite_never_replaces_the_source_or_a_users_folder(runs, tmp_path, capsys):
    """Issue 13 item 3: `export RUN --out RUN --overwrite` deleted its own source; --overwrite replaced any folder."""
    run = tmp_path / "run"
    shutil.copytree(runs["z2"], run)
    listing = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    for out in (run, run / "checkpoints", run / "checkpoints" / TAG, run / "checkpoints" / TAG / "hf"):
        assert cli_export([str(run), "--out", str(out), "--overwrite"]) == 2
        assert "overlap" in capsys.readouterr().err
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    assert cli_export([str(run), "--out", str(mine), "--overwrite"]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == listing  # nothing of the run was touched
    assert (mine / "todo.txt").read_text() == "mine"


def test_export_refuses_a_non_finite_weight(runs, tmp_path):
    """A checkpoint whose files are intact (checksums re-recorded) but hold an inf weight: rc 2 naming it."""
    from gptscale.runtime import integrity
    from gptscale.runtime.safeload import safe_torch_load

    run = tmp_path / "run"
    shutil.copytree(runs["z0"], run)
    tag_dir = run / "checkpoints" / TAG
    states = safe_torch_load(tag_dir / "mp_rank_00_model_states.pt")
    name = next(k for k, v in states["module"].items() if v.ndim == 2)
    states["module"][name][0, 0] = float("inf")
    torch.save(states, tag_dir / "mp_rank_00_model_states.pt")
    meta = json.loads((tag_dir / "gptscale.json").read_text())
    meta["files"]["mp_rank_00_model_states.pt"] = integrity.digest(tag_dir / "mp_rank_00_model_states.pt")
    (tag_dir / "gptscale.json").write_text(json.dumps(integrity.seal(meta)))
    p = subprocess.run([sys.executable, "-m", "gptscale", "export", str(run), "--out", str(tmp_path / "hf")],
                       capture_output=True, text=True, env=_env(), cwd=REPO)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"weight {name!r} holds 1 inf/NaN values" in p.stderr and not (tmp_path / "hf").exists()
