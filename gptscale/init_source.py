"""A GPT from a path: the one loader behind pre-training's train.init and fine-tuning's finetune.init.

    src = open_source("runs/base", "train.init")   # cheap: where it is, its model config, recorded tokenizer
    check_tokenizer(src, {shards_hash}, "data.shards ...", "re-shard with ...")
    model = src.load(cfg.model)                     # a GPT with the source's weights (built with cfg.model)

A source is, in this order: a local folder holding config.json (a `gptscale export` or any compatible
transformers GPT-2 / OpenAI-GPT folder); a local run folder, its checkpoints/ folder or a checkpoint tag folder
(the newest complete checkpoint, see gptscale.runtime.checkpoint.resolve); or, only when no such local path
exists, a Hugging Face Hub id (``openai-community/gpt2``), fetched with huggingface_hub.snapshot_download into
the local cache (HF_HOME / HF_HUB_CACHE), from the cache alone when HF_HUB_OFFLINE is set.

Tokenizer hashes: a checkpoint's gptscale.json records ``tokenizer_hash`` (the sha256 of the tokenizer its
shards were written with); an export's config.json records ``gptscale.tokenizer_hash`` and
``gptscale.export_tokenizer_hash`` (its exported twin). A tokenizer recorded nowhere (a plain transformers
folder) is not checked by hash; only its vocabulary size is, by the caller.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptscale.config import PRESETS, ModelConfig, from_dict
from gptscale.errors import GptscaleError
from gptscale.hf.convert import config_from_hf, load_hf
from gptscale.model import GPT, ModelLoadError, load_state
from gptscale.runtime import checkpoint
from gptscale.tokenizer import HF_TOKENIZER_FILES
from gptscale.tokenizer import META_FILE as TOKENIZER_META

HUB_FILES = ["config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
             "model.safetensors.index.json", *HF_TOKENIZER_FILES, TOKENIZER_META]
"""What is fetched of a Hub repository (not its TF/Flax/ONNX weights); pytorch_model*.bin only when it has no
safetensors."""
HUB_BIN_FILES = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
TRAINING_KEYS = ("dropout", "activation_checkpointing")
"""model.* keys that are training choices, not properties of the weights: an explicit value overrides the
source's. Any other explicit model.* key must agree with the source."""
TRUE = {"1", "ON", "YES", "TRUE"}


class InitError(GptscaleError, ValueError):
    """A model init (pre-training or fine-tuning) that cannot be used; the message says what to pass."""


@dataclass
class Source:
    """A located init: its folder, kind and model config, and what it records about its tokenizer."""

    spec: str
    """The value given (path or Hub id)."""
    path: Path
    """The local folder (a Hub id's snapshot in the cache; a checkpoint's tag folder)."""
    kind: Literal["hf", "checkpoint"]
    model: ModelConfig
    trained: set[str] = field(default_factory=set)
    """sha256 of the tokenizer it was trained with (and of its exported twin); empty: none recorded."""
    tokenizer: str | None = None
    """The tokenizer folder it holds (hf) or records (checkpoint)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """A checkpoint's gptscale.json; an HF folder's config.json 'gptscale' key ({} when absent)."""

    def describe(self) -> str:
        where = f" ({self.path})" if str(self.path) != self.spec else ""
        what = "Hugging Face folder" if self.kind == "hf" else "checkpoint"
        return f"{self.spec}{where}, {what}"

    def load(self, cfg: ModelConfig | None = None, verify: bool = True) -> GPT:
        """The GPT with the source's weights; built with `cfg` when given (the source's config, possibly with
        other TRAINING_KEYS). A checkpoint's files are checked against their checksums (`verify`; a collective
        when a process group is up: every rank must call it)."""
        if self.kind == "hf":
            try:
                model = load_hf(self.path)
            except FileNotFoundError as e:  # config.json without weights files
                raise InitError(f"{self.spec}: {e}") from None
        else:
            model, _ = checkpoint.load_model(self.path, verify=verify)
        if cfg is None or cfg == model.cfg:
            return model
        out = GPT(cfg)
        load_state(out, model.state_dict(), str(self.path))
        return out


def open_source(spec: str, key: str) -> Source:
    """Locate `spec` (see the module docstring) and read its model config and tokenizer records, no weights.
    `key` (train.init, finetune.init) names the setting in error messages."""
    p = locate(spec, key)
    cfg_file = p / "config.json"
    if cfg_file.is_file():
        try:
            raw = json.loads(cfg_file.read_text())
            model = config_from_hf(raw)
        except (ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{key}={spec}: {cfg_file}: {e}") from None
        recorded = raw.get("gptscale") or {}
        trained = {recorded.get("tokenizer_hash"), recorded.get("export_tokenizer_hash")} - {None}
        return Source(spec, p, "hf", model, trained, str(p), recorded)
    try:
        ckdir, tag = checkpoint.resolve(p)
    except checkpoint.CheckpointError as e:
        raise InitError(f"{key}={spec}: {e}; expected a Hugging Face model folder (config.json), a `gptscale "
                        f"export` folder, a run folder, its checkpoints/ folder or a checkpoint tag folder") from None
    meta = checkpoint.read_meta(ckdir, tag)
    where = ckdir / tag / checkpoint.META_FILE
    try:
        model = from_dict(ModelConfig, meta["model"], where=str(where))
    except (ValueError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(f"{where}: unreadable checkpoint metadata ({type(e).__name__}: {e})"
                                         ) from None
    trained = {meta["tokenizer_hash"]} if meta.get("tokenizer_hash") else set()
    return Source(spec, ckdir / tag, "checkpoint", model, trained, meta.get("tokenizer"), meta)


def locate(spec: str, key: str) -> Path:
    """The local folder of `spec`: the path when it exists (a local path always wins), else a Hub snapshot."""
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InitError(f"{key}={spec}: {p} is a file; expected a folder (run, checkpoint, export or Hugging "
                            f"Face model folder)")
        return p
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    tried = f"local path {p}: no such folder"
    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise InitError(f"{key}={spec}: {tried} (nor is it a Hugging Face Hub id); pass an existing run, "
                        f"checkpoint, export or Hugging Face model folder") from None
    return hub_snapshot(spec, key, tried)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub.constants import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE


def hub_snapshot(repo_id: str, key: str, tried: str) -> Path:
    """The cached snapshot folder of a Hub model repository (its config, safetensors weights and tokenizer
    files; PyTorch .bin weights only when it has no safetensors), downloaded unless offline."""
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=offline))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + HUB_BIN_FILES,
                                            local_files_only=offline))
    except (OSError, ValueError) as e:  # huggingface_hub's errors (offline, not found, gated, network) are these
        why, fix = (("offline (HF_HUB_OFFLINE is set) and not in the local cache", "unset HF_HUB_OFFLINE to fetch it")
                    if offline else ("could not be fetched", "check the id, the network and, for a gated model, "
                                     "HF_TOKEN"))
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InitError(f"{key}={repo_id}: {tried}; Hub id {repo_id}: {why} ({type(e).__name__}: {first}). Pass an "
                        f"existing local folder, or {fix}") from None
    if not (folder / "config.json").is_file():
        raise InitError(f"{key}={repo_id}: Hub snapshot {folder} has no config.json: not a transformers GPT-2 / "
                        f"OpenAI-GPT model repository")
    return folder


def check_tokenizer(source: Source, hashes: set[str], what: str, fix: str) -> None:
    """The one tokenizer-hash rule: when `source` records the tokenizer it was trained with and `hashes` (of
    the tokenizer to use now) are known, they must share one; else InitError naming `what` and `fix`."""
    hashes = hashes - {None}
    if source.trained and hashes and not source.trained & hashes:
        raise InitError(f"{what} is not the one {source.spec} was trained with (sha256 "
                        f"{sorted(source.trained)[0][:12]}...): its ids would mean other text. {fix}")


def explicit_keys(given: set[str], preset: str) -> set[str]:
    """The model keys `given` (the dotted keys a config file or flag set) sets; a given model.preset (named
    `preset`) sets all of its keys."""
    keys = {k.partition(".")[2] for k in given if k.startswith("model.")}
    if "preset" in keys:
        keys |= set(PRESETS.get(preset, {}))
    return keys - {"preset"}


def model_in_effect(base: ModelConfig, now: ModelConfig, explicit: set[str], what: str) -> ModelConfig:
    """`base` (the source's model config) with the TRAINING_KEYS `explicit` sets taken from `now`; any other
    explicit key that differs from `base` is an InitError naming both values."""
    for k in sorted(explicit - set(TRAINING_KEYS)):
        if getattr(now, k) != getattr(base, k):
            raise InitError(f"--model.{k}={getattr(now, k)!r} but {what} has model.{k}={getattr(base, k)!r}: the model "
                            f"config comes from the init. Drop --model.{k} (and model.{k} from the config file) or "
                            f"set it to {getattr(base, k)!r}")
    return dataclasses.replace(base, **{k: getattr(now, k) for k in explicit & set(TRAINING_KEYS)})
