"""Typed run configuration: one dataclass per concern, named model presets, file + CLI overrides.

Precedence (lowest first): dataclass defaults < model preset < YAML/JSON file < ``--section.key=value``.

    cfg, rest = load_config(["--config", "run.yaml", "--model.preset=gpt2-124m", "--train.lr=3e-4"])

Every field carries a docstring (the string literal under it), read back by ``field_docs`` (``gptscale config
--keys``, error messages). An unknown or mistyped key is a ``ConfigError`` naming it, its origin, the nearest.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from gptscale.config_types import (  # noqa: F401 (ConfigError and field_docs are re-exported)
    ConfigError,
    check_ranges,
    coerce,
    field_docs,
    parse_overrides,
    read_config_file,
    unknown_key,
)

# --------------------------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    """Shapes and block type of the GPT decoder. Travels inside every checkpoint and export."""

    preset: str = "gpt1"
    """Name in PRESETS this model started from (the loader fills every other model key from it)."""
    vocab_size: int = 40478
    """Rows of the token embedding (and columns of the tied LM head)."""
    n_ctx: int = 512
    """Context length: number of learned position embeddings, the longest sequence the model takes."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block; d_model must be divisible by it (head size d_model / n_head: 64 in the
    GPT-1 and GPT-2 presets, 80 to 128 in the GPT-3 ones)."""
    d_model: int = 768
    """Width of the residual stream (HF: n_embd)."""
    d_ff: int = 3072
    """Hidden width of the position-wise MLP (4 * d_model in GPT-1/2/3)."""
    ln_position: Literal["post", "pre"] = "post"
    """'post': LayerNorm after each residual add, no final LN (GPT-1). 'pre': LN before attention and
    MLP inside the residual branch plus a final LN (GPT-2/3)."""
    activation: Literal["gelu_tanh", "gelu"] = "gelu_tanh"
    """MLP non-linearity: 'gelu_tanh' is the tanh approximation GPT-1/2 used (HF 'gelu_new');
    'gelu' is the exact erf form (HF 'gelu')."""
    dropout: float = 0.1
    """Dropout on embeddings, attention probabilities and residual branches (GPT-1: 0.1)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the LM head (GPT-1/2)."""
    init_std: float = 0.02
    """Std of the N(0, std) init of linear and embedding weights."""
    scale_residual_init: bool = False
    """GPT-2 init: residual output projections get std init_std / sqrt(2 * n_layer)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward instead of storing them (training only)."""

    def __post_init__(self) -> None:
        check_ranges(self, "model", {k: ">= 1" for k in ("vocab_size", "n_ctx", "n_layer", "n_head", "d_model", "d_ff")})
        check_ranges(self, "model", {"dropout": ">= 0, < 1", "layer_norm_eps": "> 0", "init_std": ">= 0"})
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                f"pick n_head among {[h for h in range(1, 129) if self.d_model % h == 0][-6:]}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def _gpt2(n_layer: int, d_model: int, n_head: int, n_ctx: int = 1024) -> dict[str, Any]:
    return dict(
        vocab_size=50257, n_ctx=n_ctx, n_layer=n_layer, n_head=n_head, d_model=d_model,
        d_ff=4 * d_model, ln_position="pre", activation="gelu_tanh", dropout=0.1,
        tie_embeddings=True, init_std=0.02, scale_residual_init=True,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # GPT-1 (Radford et al. 2018): post-LN, learned positions, 40478-token BPE vocab.
    "gpt1": dict(
        vocab_size=40478, n_ctx=512, n_layer=12, n_head=12, d_model=768, d_ff=3072,
        ln_position="post", activation="gelu_tanh", dropout=0.1, tie_embeddings=True,
        init_std=0.02, scale_residual_init=False,
    ),
    # GPT-2 (Radford et al. 2019), pre-LN.
    "gpt2-124m": _gpt2(12, 768, 12),
    "gpt2-350m": _gpt2(24, 1024, 16),
    "gpt2-774m": _gpt2(36, 1280, 20),
    "gpt2-1.5b": _gpt2(48, 1600, 25),
    # GPT-3 (Brown et al. 2020, Table 2.1) shapes, dense attention, GPT-2 vocab, context 2048.
    "1.3b": _gpt2(24, 2048, 16, n_ctx=2048),
    "2.7b": _gpt2(32, 2560, 32, n_ctx=2048),
    "6.7b": _gpt2(32, 4096, 32, n_ctx=2048),
    # The paper's table lists d_model 5140, which 40 heads of 128 cannot give: 5120 is what was trained.
    "13b": _gpt2(40, 5120, 40, n_ctx=2048),
    # Seconds-fast shapes for tests and smoke runs, one per block order.
    "gpt1-tiny": dict(
        vocab_size=512, n_ctx=64, n_layer=2, n_head=4, d_model=64, d_ff=256, ln_position="post",
        activation="gelu_tanh", dropout=0.1, tie_embeddings=True, init_std=0.02,
        scale_residual_init=False,
    ),
    "gpt2-tiny": dict(_gpt2(2, 64, 4, n_ctx=64), vocab_size=512),
}


# ------------------------------------------------------------------------------------ other sections


@dataclass
class DataConfig:
    """Where pre-training tokens come from and how they are streamed (gptscale.data.ShardStream)."""

    shards: str = ""
    """Shard set written by `gptscale shard`: a folder or URI (s3://bucket/prefix). Several are mixed by
    weight with 'uri=weight,uri=weight'."""
    tokenizer: str = ""
    """Tokenizer folder; its hash must match the one in the shards' manifest.json."""
    seq_len: int = 512
    """Tokens per training sequence; must equal the shards' seq_len and be <= model.n_ctx."""
    seed: int = 1234
    """Seed of the global shuffle order (the same order whatever the world size)."""
    shuffle_window: int = 8
    """Shards whose samples are shuffled together (more: better mixing, more memory for the order)."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0: batches are built in the training process, a few row
    copies each; workers add inter-process copies)."""
    verify_shards: bool = True
    """sha256-check each shard against manifest.json when first opened (false skips the read)."""

    def __post_init__(self) -> None:
        check_ranges(self, "data", {"seq_len": ">= 1", "shuffle_window": ">= 1", "num_workers": ">= 0"})


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpointing and logging of a pre-training run. Fine-tuning reads only the
    run-wide keys (run_dir, ds_config, precision, compile, betas/eps, optimizer, trackers, log_interval): its
    recipe is the finetune section, and a train.* recipe key given to it is an error naming the one to use."""

    run_dir: str = "runs/default"
    """One folder per run: resolved config, logs, TensorBoard events and checkpoints."""
    init: str = ""
    """Continue pre-training from: HF/export/run/checkpoint folder or Hub id (gives model.*); ''/'none': random."""
    ds_config: str = "ds_configs/zero2.json"
    """DeepSpeed JSON: a shipped one by name (zero2, zero3_offload_smoke, ...) or a path; "auto" values filled."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Training precision (fp16 uses dynamic loss scaling)."""
    compile: bool = False
    """torch.compile the model (in place) before DeepSpeed wraps it: fused elementwise kernels. On one H100
    +35% tokens/s at gpt2-124m, +5% at 1.3b (bench/gpu/README.md); the first step pays the compile time."""
    micro_batch_size: int = 8
    """Sequences per rank per forward/backward."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    global_batch_size: int | None = None
    """If set, checked to equal micro_batch_size * grad_accum_steps * data-parallel size at start."""
    lr: float = 2.5e-4
    """Peak learning rate (GPT-1: 2.5e-4)."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 2000
    """Linear warm-up updates from 0 to lr (GPT-1: 2000)."""
    lr_schedule: Literal["cosine", "linear"] = "cosine"
    """Decay after warm-up down to min_lr: cosine (GPT-1 pre-training) or linear (GPT-1 fine-tuning)."""
    max_steps: int = 100_000
    """Optimizer steps to train for."""
    max_tokens: int | None = None
    """If set, stop once this many tokens were consumed (whichever of max_steps/max_tokens comes first)."""
    weight_decay: float = 0.01
    """Decoupled weight decay on weight matrices and embeddings (not on biases or LayerNorm gains)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon (betas and epsilon apply to both loops; fine-tuning keeps pre-training's by
    default, as GPT-1 did)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    seed: int = 1234
    """Seed of parameter init and dropout (the data order has its own, data.seed, so the two can vary
    independently)."""
    log_interval: int = 10
    """Optimizer steps between console/TensorBoard log lines."""
    eval_interval: int = 1000
    """Steps between evaluations on the validation shards (0 disables)."""
    eval_steps: int = 50
    """Validation batches per rank per evaluation (the same batches every time, so evaluations compare)."""
    checkpoint_interval: int = 1000
    """Steps between checkpoints (one is always written at the end, and one at a preemption's step
    boundary)."""
    keep_last: int = 3
    """Checkpoints kept in the run folder; older ones are deleted after a new one is complete."""
    verify_checkpoint: bool = True
    """Check a checkpoint's files against their recorded sha256 before resuming or fine-tuning from it."""
    allow_step_back: bool = False
    """Resume older than the run's newest checkpoint: the newer ones move to checkpoints/stepped_back/."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU; None picks a per-device default (H100 bf16: 989)."""
    max_bad_steps: int = 5
    """Non-finite losses in a row that stop the run (each one is skipped on every rank and counted)."""
    optimizer: str = "adamw"
    """Optimizer by name in gptscale.runtime.engine.OPTIMIZERS (both loops; with optimizer offload DeepSpeed's
    CPU Adam is used instead)."""
    trackers: str = "console,jsonl,tensorboard"
    """Comma-separated monitoring sinks of gptscale.runtime.monitor.SINKS (both loops)."""

    def __post_init__(self) -> None:
        check_ranges(self, "train", {
            "micro_batch_size": ">= 1", "grad_accum_steps": ">= 1", "global_batch_size": ">= 1", "lr": "> 0",
            "min_lr": ">= 0", "warmup_steps": ">= 0", "max_steps": ">= 1", "max_tokens": ">= 1",
            "weight_decay": ">= 0", "beta1": ">= 0, < 1", "beta2": ">= 0, < 1", "eps": "> 0", "grad_clip": ">= 0",
            "log_interval": ">= 1", "eval_interval": ">= 0", "eval_steps": ">= 1", "checkpoint_interval": ">= 1",
            "keep_last": ">= 1", "peak_tflops": "> 0", "max_bad_steps": ">= 1"})
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr={self.min_lr} is above train.lr={self.lr}: the decay ends at min_lr")


@dataclass
class FinetuneConfig:
    """GPT-1 discriminative fine-tuning (paper section 3.2 and 4.1 recipe)."""

    task: str = "rte"
    """Task name (rte, sst2, cola, mrpc, stsb, qqp, mnli, qnli, wnli, snli, scitail, race, ...)."""
    data_dir: str = ""
    """Folder with the task's local files (GLUE TSV layout etc.); empty: ../shared/data. Missing files
    fall back to the task's Hub dataset when online."""
    init: str = ""
    """Pre-training run, checkpoint, export or HF folder, or Hub id to start from; 'none': scratch."""
    lr: float = 6.25e-5
    """Peak learning rate (GPT-1: 6.25e-5)."""
    batch_size: int = 32
    """Global batch size in examples (GPT-1: 32)."""
    micro_batch_size: int = 8
    """Examples per rank per forward/backward; gradient accumulation makes up batch_size, which must be a
    multiple of micro_batch_size x ranks."""
    epochs: int = 3
    """Passes over the training split (GPT-1: 3)."""
    warmup_fraction: float = 0.002
    """Fraction of the optimizer steps spent in linear warm-up from 0 to lr, before the linear decay to 0
    (GPT-1: 0.2%)."""
    lm_coef: float = 0.5
    """Weight lambda of the auxiliary LM loss in L2 + lambda * L1 (0 disables)."""
    clf_dropout: float = 0.1
    """Dropout before the classifier head."""
    weight_decay: float = 0.01
    """Decoupled weight decay on weight matrices and embeddings, not on biases or LayerNorm gains
    (GPT-1: 0.01)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (GPT-1: 1; 0 disables)."""
    train_samples: int | None = None
    """If set, fine-tune on a seeded subset of this many training examples (few-shot)."""
    transfer_layers: int | None = None
    """If set, copy only the first k pre-trained blocks; the rest start from random init."""
    eval_samples: int | None = None
    """If set, evaluate on the first n dev examples only (quick runs)."""
    seed: int = 42
    """Seed of head init, dropout and data order."""
    train_split: str = ""
    """Split to train on; empty: the task's own (train). E.g. dev for SciTail / RACE when only dev and test
    files are at hand."""
    dev_split: str = ""
    """Split scored after each epoch to keep the best; empty: the task's own (dev; Story Cloze and IMDB:
    heldout). 'heldout': a fixed-seed part of the training split, left out of training."""
    text_col: str = "text"
    """custom task: column holding the text (the first text of a pair)."""
    text_pair_col: str = ""
    """custom task: column holding the second text of a pair; empty: single-text task."""
    label_col: str = "label"
    """custom task: column holding the label (may be absent from a test file)."""
    task_kind: Literal["", "classification", "entailment", "similarity", "regression"] = ""
    """custom task: kind; empty: inferred from the train labels only when unambiguous (class ids 0..K-1 or
    names -> classes, pairs of them -> entailment; numbers with a fractional part -> regression); anything else
    (-1/1, 1..5, 0/1 mixed with names) is an error asking for this key. similarity: both orderings, as GPT-1
    did for pairs."""
    label_names: str = ""
    """custom task: comma-separated class names in label-id order; empty: inferred from the train labels."""

    def __post_init__(self) -> None:
        check_ranges(self, "finetune", {
            "lr": "> 0", "batch_size": ">= 1", "micro_batch_size": ">= 1", "epochs": ">= 1",
            "warmup_fraction": ">= 0, < 1", "lm_coef": ">= 0", "clf_dropout": ">= 0, < 1", "weight_decay": ">= 0",
            "grad_clip": ">= 0", "train_samples": ">= 1", "transfer_layers": ">= 0", "eval_samples": ">= 1"})


@dataclass
class RunConfig:
    """Everything one run reads; each section is one concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The decoder's shapes (model.preset fills the rest)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Pre-training data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and run bookkeeping."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning task and recipe."""


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}


# ----------------------------------------------------------------------------------- loading


def build_section(cls: type, values: dict[str, tuple[Any, str]], section: str) -> Any:
    """Make one section dataclass from {key: (raw value, where it came from)}, preset first."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    if cls is ModelConfig and "preset" in values:
        name, where = values["preset"]
        if name not in PRESETS:
            close = difflib.get_close_matches(str(name), list(PRESETS), n=3)
            raise ConfigError(
                f"{where}: unknown model.preset {name!r}"
                + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                + f" (presets: {', '.join(PRESETS)})"
            )
        kwargs.update(PRESETS[name])
        kwargs["preset"] = name
    for key, (raw, where) in values.items():
        if key not in names:
            raise unknown_key(key, names, where, prefix=f"{section}.")
        if key != "preset":
            kwargs[key] = coerce(raw, hints[key], f"{section}.{key}", where)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a range check: say where the value came from
        key = getattr(e, "key", None)
        if key in values:
            raise ConfigError(f"{values[key][1]}: {e}") from None
        raise


def model_config(preset: str = "gpt1", **overrides: Any) -> ModelConfig:
    """A ModelConfig from a named preset with keyword overrides (checked like file keys)."""
    values = {"preset": (preset, "model_config()")}
    values.update({k: (v, "model_config()") for k, v in overrides.items()})
    return build_section(ModelConfig, values, "model")


def config_layers(argv: list[str] | None) -> tuple[list[dict[str, dict[str, tuple[Any, str]]]], list[str]]:
    """The file layer (if --config is given) and the flag layer of argv, each {section: {key: (value, where)}};
    with the arguments that are neither (for the entry point's own parser)."""
    config_file, overrides, rest = parse_overrides(list(argv or []), list(SECTIONS))
    return ([read_config_file(config_file, list(SECTIONS))] if config_file else []) + [overrides], rest


def load_config(argv: list[str] | None = None) -> tuple[RunConfig, list[str]]:
    """Resolve defaults < preset < file < CLI into a RunConfig; return it with the unparsed args."""
    cfg, rest, _ = load_config_and_keys(argv)
    return cfg, rest


def load_config_and_keys(argv: list[str] | None) -> tuple[RunConfig, list[str], set[str]]:
    """load_config, plus the 'section.key' of every key argv sets (in its --config file or as a flag),
    defaults and presets aside."""
    layers, rest = config_layers(argv)
    given = {f"{section}.{key}" for layer in layers for section, keys in layer.items() for key in keys}
    sections = {}
    for section, cls in SECTIONS.items():
        merged: dict[str, tuple[Any, str]] = {}
        for layer in layers:
            merged.update(layer.get(section, {}))
        sections[section] = build_section(cls, merged, section)
    return RunConfig(**sections), rest, given


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for YAML/JSON dumps and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], where: str = "dict") -> Any:
    """Rebuild a section (e.g. ModelConfig from a checkpoint) with the same key and type checks.

    A stored config is complete, so every key is taken as written; a preset name is kept as a label.
    """
    section = {v: k for k, v in SECTIONS.items()}.get(cls, cls.__name__)
    obj = build_section(cls, {k: (v, where) for k, v in data.items() if k != "preset"}, section)
    return dataclasses.replace(obj, preset=str(data["preset"])) if "preset" in data else obj


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
