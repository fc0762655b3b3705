"""Continued pre-training (train.init) and the one init loader shared with fine-tuning (gptscale.init_source).

The oracle of a continued run: its first logged loss equals the source model's loss on the exact first batch,
with the source loaded independently (transformers for an HF folder, DeepSpeed's zero_to_fp32 for a gptscale
checkpoint), dropout off."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from gptscale.config import load_config_and_keys
from gptscale.data import ShardStream
from gptscale.init_source import InitError, open_source
from gptscale.pretrain import check_data, with_init
from helpers import REPO, base_config, child_env, launch, losses


def init_config(tmp: Path, shard_dir: Path, tok_dir: Path, **train) -> Path:
    """base_config without a model section (the model comes from the init), one micro-batch per step."""
    f = base_config(tmp, shard_dir, tok_dir, **{"max_steps": 2, "eval_interval": 0, "checkpoint_interval": 2,
                                                "grad_accum_steps": 1, **train})
    cfg = yaml.safe_load(f.read_text())
    cfg.pop("model")
    f.write_text(yaml.safe_dump(cfg))
    return f


def hf_folder(out: Path, **kw) -> Path:
    """A GPT-2 folder written by transformers itself (save_pretrained), dropout off, wide init (loss far from
    a fresh model's ln(vocab))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    args = {**dict(vocab_size=2000, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                   attn_pdrop=0.0, initializer_range=0.1), **kw}
    GPT2LMHeadModel(GPT2Config(**args)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return hf_folder(tmp_path_factory.mktemp("hf") / "tiny-gpt2")


def first_batch(shard_dir: Path, rows: int) -> torch.Tensor:
    """The first global batch of a run (all ranks' first micro-batches, in rank order), seed and window as
    base_config leaves them."""
    return next(iter(ShardStream(str(shard_dir), batch_size=rows, seed=1234, rank=0, world_size=1, shuffle_window=8)))


def lm_loss(logits: torch.Tensor, batch: torch.Tensor) -> float:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1)).item()


def safe_open_tensor(file: Path, key: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(file))[key]


def resolved(config: Path, *flags: str):
    cfg, _, given = load_config_and_keys(["--config", str(config), *flags])
    return cfg, given


def test_continue_from_a_transformers_folder(tmp_path, shard_dir, tok_dir, hf_dir):
    """One process from a folder transformers wrote: step 1's loss is transformers' loss on that batch."""
    from transformers import AutoModelForCausalLM

    cfg = init_config(tmp_path, shard_dir, tok_dir)
    out = launch(cfg, f"--train.init={hf_dir}", nproc=1)
    assert f"initialised from {hf_dir}, Hugging Face folder" in out.stdout
    assert "records no tokenizer" in out.stdout  # a plain transformers folder: only the vocab size was checked
    batch = first_batch(shard_dir, 4)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = lm_loss(hf(batch[:, :-1]).logits, batch)
    got = losses(tmp_path / "run")
    assert got[1] == pytest.approx(want, rel=1e-5)
    assert want > 8.0  # the wide init is far from a fresh model's ln(2000) = 7.6: a random start would not match
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["train"]["init"] == str(hf_dir)
    m = written["model"]
    assert (m["vocab_size"], m["n_ctx"], m["n_layer"], m["d_model"], m["ln_position"], m["dropout"]) == (
        2000, 64, 2, 64, "pre", 0.0)


@pytest.mark.slow
def test_continue_from_a_checkpoint_on_two_ranks_then_resume(tmp_path, shard_dir, tok_dir):
    """Run A (2 steps), run B from A's run folder on 2 ranks (ZeRO-2): B's step 1 equals A's weights (read with
    zero_to_fp32) on the first global batch. B resumed takes its own checkpoint, with A's folder gone."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from gptscale.config import ModelConfig, from_dict
    from gptscale.model import GPT
    from gptscale.runtime.safeload import safe_loading

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    launch(base_config(tmp_path / "a", shard_dir, tok_dir, max_steps=2, eval_interval=0, checkpoint_interval=2,
                       grad_accum_steps=1), "--model.dropout=0.0", nproc=1)
    src = tmp_path / "a" / "run"
    cfg_b = init_config(tmp_path / "b", shard_dir, tok_dir)
    out = launch(cfg_b, f"--train.init={src}")
    assert "initialised from" in out.stdout and "checkpoint" in out.stdout
    a_model = yaml.safe_load((src / "config.yaml").read_text())["model"]
    gpt = GPT(from_dict(ModelConfig, a_model)).eval()
    with safe_loading():
        state = get_fp32_state_dict_from_zero_checkpoint(str(src / "checkpoints"), "step_00000002")
    res = gpt.load_state_dict(state, strict=False)
    assert set(res.missing_keys) <= {"lm_head.weight"} and not res.unexpected_keys
    assert torch.equal(gpt.lm_head.weight, state["wte.weight"])  # tied: the head came with the embedding
    batch = first_batch(shard_dir, 8)  # 2 ranks x micro-batch 4
    with torch.no_grad():
        want = lm_loss(gpt(batch[:, :-1])[0], batch)
    run_b = tmp_path / "b" / "run"
    assert losses(run_b)[1] == pytest.approx(want, rel=1e-5)
    assert abs(want - losses(src)[1]) > 1e-3  # not the loss of the seed's random init (A's own first step)
    assert yaml.safe_load((run_b / "config.yaml").read_text())["model"] == a_model
    shutil.move(src, tmp_path / "a" / "gone")  # the resume must not need the init
    out = launch(cfg_b, f"--train.init={src}", "--train.max_steps=3")
    assert out.stdout.count("not read: resuming from") == 1 and "resumed from" in out.stdout
    assert "initialised from" not in out.stdout
    assert sorted(losses(run_b)) == [1, 2, 3]


def test_init_checks_fail_before_compute(tmp_path, shard_dir, tok_dir, hf_dir, monkeypatch):
    """Vocabulary, context, recorded tokenizer hash, explicit model flags, unknown paths: each a clear error."""
    cfg_file = init_config(tmp_path, shard_dir, tok_dir)

    def check(init: Path | str, *flags: str):
        cfg, init_src = with_init(*resolved(cfg_file, f"--train.init={init}", *flags), resume="auto")
        check_data(cfg, init_src)
        return cfg, init_src

    with pytest.raises(InitError, match=r"has 2000 ids but train.init=.*small-vocab has model.vocab_size 1000"):
        check(hf_folder(tmp_path / "small-vocab", vocab_size=1000))
    with pytest.raises(InitError, match=r"seq_len 32 exceeds the context of train.init=.*short \(model.n_ctx 16\)"):
        check(hf_folder(tmp_path / "short", n_positions=16))
    other = hf_folder(tmp_path / "other-tok")
    raw = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**raw, "gptscale": {"tokenizer_hash": "ab" * 32}}))
    with pytest.raises(InitError, match=r"tokenizer .* is not the one .*other-tok was trained with \(sha256 ababab"):
        check(other)
    with pytest.raises(InitError, match=r"--model.n_layer=3 but train.init=.* has model.n_layer=2"):
        check(hf_dir, "--model.n_layer=3")
    with pytest.raises(InitError, match=r"--model.d_ff=3072 but .* has model.d_ff=256"):
        check(hf_dir, "--model.preset=gpt1")  # a preset sets all its keys
    cfg, src = check(hf_dir, "--model.dropout=0.2", "--model.vocab_size=2000")  # training keys, agreeing ones pass
    assert (cfg.model.dropout, cfg.model.n_layer, cfg.model.vocab_size) == (0.2, 2, 2000)
    gpt = src.load(cfg.model)
    assert gpt.cfg == cfg.model and gpt.drop.p == 0.2  # built with the dropout in effect, the source's weights:
    assert torch.equal(gpt.wte.weight, safe_open_tensor(hf_dir / "model.safetensors", "transformer.wte.weight"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InitError, match=r"local path nobody-here/no-model: no such folder; Hub id nobody-here/no-model:"
                                        r" offline \(HF_HUB_OFFLINE is set\) and not in the local cache"):
        check("nobody-here/no-model")
    with pytest.raises(InitError, match=r"local path /no/such/dir: no such folder \(nor is it a Hugging Face Hub id\)"):
        check("/no/such/dir")
    with pytest.raises(InitError, match=r"no complete checkpoint here.*expected a Hugging Face model folder"):
        check(tmp_path)


def test_hub_id_from_the_local_cache_and_a_local_path_wins(tmp_path, monkeypatch):
    """Offline, a Hub id resolves from the cache (the layout huggingface_hub writes); a local folder of the same
    name wins over it."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-gpt2" / "snapshots" / ("0" * 40)
    hf_folder(snap, n_layer=1)
    (cache / "models--someone--tiny-gpt2" / "refs").mkdir()
    (cache / "models--someone--tiny-gpt2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    src = open_source("someone/tiny-gpt2", "train.init")
    assert (src.kind, src.path.resolve(), src.model.n_layer) == ("hf", snap.resolve(), 1)
    hf_folder(tmp_path / "someone" / "tiny-gpt2", n_layer=2)
    src = open_source("someone/tiny-gpt2", "train.init")
    assert (src.path, src.model.n_layer) == (Path("someone/tiny-gpt2"), 2)


def test_finetune_init_uses_the_same_loader(tmp_path, tok_dir, hf_dir, monkeypatch):
    """finetune.init: a transformers folder gives its weights (task tokens added), a recorded tokenizer hash
    that is not --data.tokenizer's is refused, and a Hub id offline is the same clear error as train.init's."""
    from transformers import AutoModelForCausalLM

    from gptscale.config import load_config
    from gptscale.tasks.heads import load_init

    def resolve(argv: list[str]):  # what finetune.resolve gives load_init, without a task
        return load_config([a.replace("--init=", "--finetune.init=") for a in argv])[0]

    gpt, tok = load_init(resolve([f"--init={hf_dir}", f"--data.tokenizer={tok_dir}"]))
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert gpt.cfg.n_layer == 2 and tok.missing_task_specials() == []
    assert torch.equal(gpt.wte.weight[:2000], hf.transformer.wte.weight)
    other = hf_folder(tmp_path / "other-tok")
    raw = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**raw, "gptscale": {"export_tokenizer_hash": "cd" * 32}}))
    with pytest.raises(InitError, match=r"is not the one .* was trained with \(sha256 cdcdcd.*--data.tokenizer="):
        load_init(resolve([f"--init={other}", f"--data.tokenizer={tok_dir}"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InitError, match=r"finetune.init=openai-community/gpt2: local path .* Hub id .*offline"):
        load_init(resolve(["--init=openai-community/gpt2"]))


def test_cli_init_error_is_a_message_and_status_2(tmp_path, shard_dir, tok_dir):
    cfg = init_config(tmp_path, shard_dir, tok_dir)
    p = subprocess.run([sys.executable, "-m", "gptscale", "pretrain", "--config", str(cfg),
                        "--train.init=openai-community/gpt2"], capture_output=True, text=True, timeout=300,
                       cwd=str(REPO), env=child_env(HF_HUB_OFFLINE="1"))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert "train.init=openai-community/gpt2: local path openai-community/gpt2: no such folder; Hub id" in p.stderr
    assert not (tmp_path / "run").exists()  # nothing started
