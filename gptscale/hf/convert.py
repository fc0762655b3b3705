"""Hugging Face interchange: key maps, config maps, export to and import from an HF folder.

Post-LN models map to transformers' ``OpenAIGPTLMHeadModel`` (model_type 'openai-gpt'), pre-LN models
to ``GPT2LMHeadModel`` ('gpt2'). HF keeps these weights in Conv1D layout (in, out); ours are nn.Linear
(out, in), so the four block matrices in TRANSPOSED are transposed both ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel

from gptscale.config import ModelConfig, from_dict
from gptscale.files import atomic_dir
from gptscale.model import GPT, ModelLoadError, load_state

# ours -> HF, outside the blocks, per HF family
TOP_KEYS: dict[str, dict[str, str]] = {
    "openai-gpt": {
        "wte.weight": "transformer.tokens_embed.weight",
        "wpe.weight": "transformer.positions_embed.weight",
        "lm_head.weight": "lm_head.weight",
    },
    "gpt2": {
        "wte.weight": "transformer.wte.weight",
        "wpe.weight": "transformer.wpe.weight",
        "ln_f.weight": "transformer.ln_f.weight",
        "ln_f.bias": "transformer.ln_f.bias",
        "lm_head.weight": "lm_head.weight",
    },
}
# ours -> HF inside block i: "h.{i}.<ours>" <-> "transformer.h.{i}.<hf>" (same names in both families)
BLOCK_KEYS: dict[str, str] = {
    "ln_1.weight": "ln_1.weight",
    "ln_1.bias": "ln_1.bias",
    "attn.c_attn.weight": "attn.c_attn.weight",
    "attn.c_attn.bias": "attn.c_attn.bias",
    "attn.c_proj.weight": "attn.c_proj.weight",
    "attn.c_proj.bias": "attn.c_proj.bias",
    "ln_2.weight": "ln_2.weight",
    "ln_2.bias": "ln_2.bias",
    "mlp.c_fc.weight": "mlp.c_fc.weight",
    "mlp.c_fc.bias": "mlp.c_fc.bias",
    "mlp.c_proj.weight": "mlp.c_proj.weight",
    "mlp.c_proj.bias": "mlp.c_proj.bias",
}
TRANSPOSED = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
# our activation -> HF's name for it, per family. OpenAI-GPT's own table maps afn "gelu" to the tanh
# form (and has no exact GELU); GPT-2 uses the shared table where "gelu" is the exact erf form.
ACTIVATIONS = {"openai-gpt": {"gelu_tanh": "gelu"}, "gpt2": {"gelu_tanh": "gelu_new", "gelu": "gelu"}}
HF_ACTIVATIONS = {
    "openai-gpt": {"gelu": "gelu_tanh"},
    "gpt2": {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"},
}
# HF buffers some older checkpoints carry (causal masks); not weights, safe to drop on import.
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")
HF_HEADS = ("score.", "multiple_choice_head.")
"""Task heads of HF classifier / double-heads folders: not part of the GPT body, skipped on import."""
LM_DIR = "lm"
"""Subfolder of a fine-tuned classifier folder holding its exact causal-LM body (gptscale.hf.task_export):
``load_hf`` reads the body from there, since the classifier's own final LayerNorm carries the folded head bias."""


def hf_family(cfg: ModelConfig) -> str:
    return "openai-gpt" if cfg.ln_position == "post" else "gpt2"


def key_map(cfg: ModelConfig) -> dict[str, str]:
    """Every one of our state-dict keys -> its HF LMHeadModel key, for this config."""
    top = dict(TOP_KEYS[hf_family(cfg)])
    if cfg.tie_embeddings:
        top.pop("lm_head.weight")  # HF stores the tied head once, as the embedding
    blocks = {f"h.{i}.{ours}": f"transformer.h.{i}.{hf}" for i in range(cfg.n_layer) for ours, hf in BLOCK_KEYS.items()}
    return {**top, **blocks}


def _transposed(key: str) -> bool:
    return key.split(".", 2)[-1] in TRANSPOSED if key.startswith("h.") else False


def hf_config(cfg: ModelConfig, **extra):
    """The transformers config equivalent to ours (raises where HF cannot express it)."""
    common = dict(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_eps, initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    if hf_family(cfg) == "openai-gpt":
        if cfg.d_ff != 4 * cfg.d_model:
            raise ValueError(
                f"OpenAI-GPT (post-LN) in transformers has d_ff fixed at 4 * d_model = {4 * cfg.d_model}; "
                f"this model has model.d_ff={cfg.d_ff}"
            )
        if cfg.activation not in ACTIVATIONS["openai-gpt"]:
            raise ValueError(f"OpenAI-GPT (post-LN) in transformers only has the tanh GELU; model.activation={cfg.activation!r}")
        return OpenAIGPTConfig(afn=ACTIVATIONS["openai-gpt"][cfg.activation], **common, **extra)
    # GPT2Config defaults bos/eos to 50256, which is out of range for smaller vocabularies.
    special = {} if cfg.vocab_size > 50256 else dict(bos_token_id=None, eos_token_id=None)
    return GPT2Config(
        n_inner=cfg.d_ff, activation_function=ACTIVATIONS["gpt2"][cfg.activation], **common, **{**special, **extra}
    )


def config_from_hf(hc) -> ModelConfig:
    """Our ModelConfig from a transformers OpenAIGPTConfig / GPT2Config (or its dict)."""
    d = hc if isinstance(hc, dict) else hc.to_dict()
    family = d.get("model_type")
    if family not in TOP_KEYS:
        raise ValueError(f"model_type {family!r} is not supported: expected 'openai-gpt' or 'gpt2'")
    act_key = "afn" if family == "openai-gpt" else "activation_function"
    act = d.get(act_key, "gelu" if family == "openai-gpt" else "gelu_new")
    if act not in HF_ACTIVATIONS[family]:
        raise ValueError(f"{family} {act_key}={act!r} is not supported (expected one of {sorted(HF_ACTIVATIONS[family])})")
    if family == "gpt2":
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if d.get(flag):
                raise ValueError(f"GPT-2 option {flag}=True is not supported by gptscale's decoder")
        if d.get("scale_attn_weights") is False:
            raise ValueError("GPT-2 option scale_attn_weights=False is not supported by gptscale's decoder")
    n_embd = d["n_embd"]
    return from_dict(ModelConfig, dict(
        preset="custom", vocab_size=d["vocab_size"], n_ctx=d["n_positions"], n_layer=d["n_layer"],
        n_head=d["n_head"], d_model=n_embd,
        d_ff=(d.get("n_inner") or 4 * n_embd) if family == "gpt2" else 4 * n_embd,
        ln_position="post" if family == "openai-gpt" else "pre", activation=HF_ACTIVATIONS[family][act],
        dropout=d.get("resid_pdrop", 0.1), layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=d.get("tie_word_embeddings", True), init_std=d.get("initializer_range", 0.02),
        scale_residual_init=family == "gpt2",
    ), where="HF config")


# ------------------------------------------------------------------------------- state dicts


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> HF LMHeadModel state dict (Conv1D layout, tied head stored once)."""
    kmap = key_map(cfg)
    extra = set(state) - set(kmap) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    if extra:
        raise KeyError(f"unexpected keys in gptscale state dict: {sorted(extra)[:8]}")
    out = {}
    for ours, hf in kmap.items():
        if ours not in state:
            raise KeyError(f"gptscale state dict lacks {ours!r} (needed for HF key {hf!r})")
        t = state[ours]
        out[hf] = t.t().contiguous() if _transposed(ours) else t.clone()
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF LMHeadModel (or base-model) state dict -> ours. Missing, unexpected or mis-shaped keys raise."""
    state = {}
    for k, v in hf_state.items():
        if k.endswith(HF_BUFFERS) or k.startswith(HF_HEADS):
            continue
        if not k.startswith(("transformer.", "lm_head.")):
            k = "transformer." + k  # a base model saved on its own has no 'transformer.' prefix
        state[k] = v
    kmap = key_map(cfg)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # redundant copy of the embedding
    missing = [hf for hf in kmap.values() if hf not in state]
    unexpected = sorted(set(state) - set(kmap.values()))
    if missing or unexpected:
        raise KeyError(f"HF state dict does not match the config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    out = {}
    for ours, hf in kmap.items():
        t = state[hf].t().contiguous() if _transposed(ours) else state[hf].clone()
        out[ours] = t
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def to_hf_model(model: GPT):
    """A transformers LMHeadModel with our model's weights (for tests and in-process use)."""
    cls = OpenAIGPTLMHeadModel if hf_family(model.cfg) == "openai-gpt" else GPT2LMHeadModel
    hf = cls(hf_config(model.cfg))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg), strict=not model.cfg.tie_embeddings)
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf


def from_hf_model(hf) -> GPT:
    """Our GPT with the weights of a transformers OpenAIGPTLMHeadModel / GPT2LMHeadModel."""
    cfg = config_from_hf(hf.config)
    model = GPT(cfg)
    load_state(model, from_hf_state_dict(hf.state_dict(), cfg), type(hf).__name__)
    return model


# ---------------------------------------------------------------------------------- folders


def export_hf(model: GPT, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write an HF folder (config.json, model.safetensors) loadable by AutoModelForCausalLM, atomically."""
    with atomic_dir(out_dir, overwrite, kind="hf-model") as tmp:
        write_hf(model, tmp)
    return Path(out_dir)


def write_hf(model: GPT, folder: Path) -> None:
    """config.json + model.safetensors of `model` into an existing folder."""
    hc = hf_config(model.cfg, architectures=[
        "OpenAIGPTLMHeadModel" if hf_family(model.cfg) == "openai-gpt" else "GPT2LMHeadModel"])
    hc.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in to_hf_state_dict(model.state_dict(), model.cfg).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of an HF folder: single or sharded safetensors, else pytorch_model.bin (weights only)."""
    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _torch_load)):
        index = folder / index_name
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                state.update(_readable(loader, folder / shard))
            return state
    if (folder / "model.safetensors").is_file():
        return _readable(load_file, folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _torch_load(str(folder / "pytorch_model.bin"))
    raise FileNotFoundError(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def _readable(loader, path: Path) -> dict[str, torch.Tensor]:
    try:
        return loader(str(path))
    except (SafetensorError, OSError, RuntimeError, EOFError) as e:
        raise ModelLoadError(f"{path}: not a readable weights file ({type(e).__name__}: {e}): truncated or damaged; "
                             f"re-export or copy it again") from None


def _torch_load(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects


def load_hf(folder: str | Path) -> GPT:
    """Our GPT from a local HF folder (config.json + model.safetensors or pytorch_model.bin); for a gptscale
    classifier folder, the exact body in its LM_DIR; the task heads of HF classifier folders are skipped."""
    folder = Path(folder)
    if (folder / LM_DIR / "config.json").is_file():
        folder = folder / LM_DIR
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a Hugging Face model folder")
    try:
        cfg = config_from_hf(json.loads(cfg_file.read_text()))
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"{cfg_file}: {e}") from None
    state = _read_weights(folder)
    model = GPT(cfg)
    try:
        ours = from_hf_state_dict(state, cfg)
    except KeyError as e:
        raise ModelLoadError(f"{folder}: {e.args[0]}") from None
    load_state(model, ours, str(folder))
    return model


@torch.no_grad()
def check_hf_folder(model: GPT, folder: str | Path, seq_len: int = 32, new_tokens: int = 16, seed: int = 0) -> dict:
    """Load an exported folder with transformers.AutoModelForCausalLM and compare it with our model:
    max-abs logit difference (fp32, eval) and equality of greedy generate() tokens."""
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # compare all new_tokens, like ours (no early stop)
    model = model.eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.cfg.vocab_size, (2, min(seq_len, model.cfg.n_ctx)), generator=g)
    diff = (hf(idx).logits - model(idx)[0]).abs().max().item()
    prompt = idx[:1, : max(1, min(8, model.cfg.n_ctx - new_tokens))]
    ours = model.generate(prompt, new_tokens)
    theirs = hf.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                         attention_mask=torch.ones_like(prompt))
    return {"hf_class": type(hf).__name__, "max_abs_diff": diff,
            "generate_equal": ours.tolist() == theirs.tolist(), "ours": ours[0].tolist(), "hf": theirs[0].tolist()}
