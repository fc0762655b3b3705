"""Hugging Face parity, both ways: transformers' OpenAIGPTLMHeadModel / GPT2LMHeadModel are the oracle."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from gptscale.config import model_config
from gptscale.hf import convert
from gptscale.hf.convert import (
    check_hf_folder,
    config_from_hf,
    export_hf,
    from_hf_model,
    from_hf_state_dict,
    hf_config,
    load_hf,
    to_hf_model,
)
from gptscale.model import GPT

CONFIGS = {
    "gpt1-tiny": model_config("gpt1-tiny"),
    "gpt1-odd": model_config("gpt1-tiny", n_layer=3, d_model=48, n_head=6, d_ff=192, n_ctx=40,
                             vocab_size=301, layer_norm_eps=1e-6),
    "gpt2-tiny": model_config("gpt2-tiny"),
    "gpt2-exact-gelu-untied": model_config("gpt2-tiny", n_layer=3, d_model=96, n_head=3, d_ff=200, n_ctx=48,
                                           vocab_size=333, activation="gelu", tie_embeddings=False),
}


def jitter(module: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter (LN gains, biases included) so no mapping error hides behind ones/zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def batch(cfg, B=3, seed=1):
    return torch.randint(0, cfg.vocab_size, (B, cfg.n_ctx), generator=torch.Generator().manual_seed(seed))


def max_diff(ours: GPT, hf, idx) -> float:
    with torch.no_grad():
        return (ours.eval()(idx)[0] - hf.eval()(idx).logits).abs().max().item()


@pytest.mark.parametrize("name", CONFIGS)
def test_ours_to_hf(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    ours = GPT(cfg)
    jitter(ours)
    hf = to_hf_model(ours)
    assert type(hf).__name__ == ("OpenAIGPTLMHeadModel" if cfg.ln_position == "post" else "GPT2LMHeadModel")
    idx = batch(cfg)
    assert max_diff(ours, hf, idx) <= 1e-5
    labels = idx.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        _, loss = ours(idx[:, :-1], labels[:, 1:])
        hf_loss = hf(idx, labels=labels).loss
    assert abs(loss.item() - hf_loss.item()) <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_to_ours(name):
    hf = to_hf_model(GPT(CONFIGS[name]))  # the HF architecture for this config ...
    jitter(hf, seed=3)  # ... with weights that only HF has seen
    ours = from_hf_model(hf)
    assert ours.cfg.ln_position == CONFIGS[name].ln_position
    assert ours.cfg.activation == CONFIGS[name].activation
    assert ours.cfg.tie_embeddings == CONFIGS[name].tie_embeddings
    assert max_diff(ours, hf, batch(ours.cfg, seed=2)) <= 1e-5


def _mutate(kind: str, m: GPT) -> None:
    with torch.no_grad():
        for b in m.h:
            if kind == "ln_placement":
                b.pre_ln = not b.pre_ln
            elif kind == "gelu_variant":
                b.mlp.approximate = "none" if b.mlp.approximate == "tanh" else "tanh"
            elif kind == "transpose":  # a square matrix: a forgotten transpose raises no shape error
                b.attn.c_proj.weight.copy_(b.attn.c_proj.weight.t().clone())
        if kind == "untied_head":
            m.lm_head = torch.nn.Linear(m.cfg.d_model, m.cfg.vocab_size, bias=False)


@pytest.mark.parametrize("kind", ["ln_placement", "gelu_variant", "transpose", "untied_head"])
@pytest.mark.parametrize("name", ["gpt1-tiny", "gpt2-tiny"])
def test_parity_check_catches_each_mistake(name, kind):
    """The 1e-5 check above is meaningful: each classic conversion mistake misses it by at least 10x."""
    torch.manual_seed(0)
    ours = GPT(CONFIGS[name])
    jitter(ours)
    hf = to_hf_model(ours)
    _mutate(kind, ours)
    assert max_diff(ours, hf, batch(ours.cfg)) > 1e-4  # >= 10x the parity tolerance


@pytest.mark.parametrize("name", CONFIGS)
def test_export_folder_loads_with_automodel(tmp_path, name):
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    ours = GPT(dataclasses.replace(cfg, init_std=0.1))
    jitter(ours)
    out = export_hf(ours, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp folder left behind
    report = check_hf_folder(ours, out, new_tokens=12)
    assert report["max_abs_diff"] <= 1e-5
    assert report["generate_equal"], report
    assert len(set(report["ours"])) > 3  # greedy output is not one token repeated (a weak comparison)
    back = load_hf(out)
    assert max_diff(back, AutoModelForCausalLM.from_pretrained(out), batch(cfg)) <= 1e-5
    for (k, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def test_export_refuses_to_clobber_and_is_atomic(tmp_path, monkeypatch):
    ours = GPT(CONFIGS["gpt2-tiny"])
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_hf(ours, out)
    with pytest.raises(FileExistsError, match="not a hf-model folder gptscale wrote"):
        export_hf(ours, out, overwrite=True)  # a folder of the user's is never replaced
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    first = export_hf(ours, tmp_path / "ours")
    before = sorted(p.name for p in first.iterdir())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(convert, "save_file", boom)  # the weights write fails half-way through the export
    with pytest.raises(OSError, match="disk full"):
        export_hf(ours, first, overwrite=True)
    assert sorted(p.name for p in first.iterdir()) == before  # the old export survives a failed one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ours"]


def test_loads_a_folder_saved_by_transformers(tmp_path):
    """A user's local GPT-2-family folder (e.g. a saved distilgpt2) imports with HF's own key layout."""
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                    bos_token_id=None, eos_token_id=None))
    jitter(hf)
    hf.save_pretrained(tmp_path / "distil")
    ours = load_hf(tmp_path / "distil")
    assert max_diff(ours, hf, torch.randint(0, 100, (2, 32))) <= 1e-5


def test_mismatch_errors_name_the_problem(tmp_path):
    ours = GPT(CONFIGS["gpt2-tiny"])
    out = export_hf(ours, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    cfg["n_embd"] = 32
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"shape mismatch.*wte.weight"):
        load_hf(out)
    with pytest.raises(KeyError, match="missing"):
        from_hf_state_dict({}, ours.cfg)
    with pytest.raises(ValueError, match="d_ff"):
        hf_config(model_config("gpt1-tiny", d_ff=100))
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf({"model_type": "llama"})
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)


def test_key_maps_are_complete():
    for name, cfg in CONFIGS.items():
        sd = GPT(cfg).state_dict()
        keys = set(convert.key_map(cfg))
        assert keys == set(sd) - ({"lm_head.weight"} if cfg.tie_embeddings else set()), name
