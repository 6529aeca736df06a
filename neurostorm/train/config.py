"""Experiment configuration: one YAML file per experiment, validated into dataclasses.

Every run folder gets the full configuration back as ``config.yaml`` (every default visible). Values are
overridden on the command line as ``section.key=value`` (the value is read as YAML: ``optim.lr=1e-4``,
``model.overrides={drop_path: 0.1}``). ``--config tiny`` or ``--config base`` start from a preset.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from neurostorm.errors import InputError


@dataclass
class StoreSource:
    """One preprocessed store; pretraining samples stores by ``weight``, at most ``max_clips`` per epoch."""

    path: str
    weight: float = 1.0
    max_clips: int | None = None


@dataclass
class DataConfig:
    stores: list[StoreSource] = field(default_factory=list)  # fine-tuning uses the first
    sequence_length: int = 20  # frames per clip (16 s at TR 0.8); task fMRI often uses 40
    stride: int | None = None  # between evaluation clips; default non-overlapping
    random_crop: bool = True  # training clips start at random frames
    batch_size: int = 8
    num_workers: int | None = None  # loader processes; None: none on a CPU, LOADER_WORKERS_ON_GPU on a GPU
    prefetch_batches: int = 2  # batches each worker reads ahead
    stall_share: float = 0.2  # warn when training waits on data for more than this share of an epoch's time
    split_file: str | None = None  # subject split (JSON); default RUN_DIR/split.json, reused when present
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    val_subjects_for_pretraining: float = 0.1  # share of subjects held out to measure reconstruction
    cv_folds: int = 0  # k > 1: k-fold cross-validation by subject (stratified; sites kept whole if a 'site' column)
    test_sites: list[str] = field(default_factory=list)  # leave-site-out: these sites' subjects are the test set
    cv_by_site: bool = False  # cross-validation with one fold per site of the 'site' column, scored per site
    harmonize: str = "none"  # combat: ComBat of FC / frozen embeddings by site, fitted on train + val subjects
    atlas: str = "power264"  # connectome models: ROIs whose time series give the FC matrices
    roi_dir: str | None = None  # connectome models: ROI folder (reused, else extracted; default RUN_DIR/roi)
    exclude_flagged: bool = False  # leave out runs the store's quality report flagged (`neurostorm report`)

    @property
    def val_share(self) -> float:
        """Validation share of the subjects outside the test set (leave-site-out and cross-validation)."""
        return self.split_fractions[1] / max(1e-9, 1 - self.split_fractions[2])


@dataclass
class TaskConfig:
    # a registered task family (neurostorm.tasks: classification, regression, task_state, image_retrieval,
    # reidentification, and plugins); when not given: regression
    # for a numeric label with more than CLASSES_AT_MOST values in the store, else classification
    kind: str = "classification"
    label: str | None = None  # column of the store's labels (participants.tsv); task_state: not used
    class_weights: bool = False  # weight classes by inverse frequency in the loss
    events: list[str] = field(default_factory=list)  # task_state: folders holding the runs' *_events.tsv
    events_delay: float = 0.0  # task_state: seconds by which labels lag the events (haemodynamic delay)
    exclude_conditions: list[str] = field(default_factory=list)  # task_state: conditions not to classify
    stimuli: str | None = None  # image_retrieval: .npz with 'names' (N,) and 'embeddings' (N, D)
    temperature: float = 0.1  # retrieval: softmax temperature of InfoNCE / NT-Xent


@dataclass
class ModelConfig:
    name: str = "neurostorm-tiny"  # registry name (see `neurostorm info`)
    init: str = "scratch"  # scratch | a pretrained folder | a reference NeuroSTORM .ckpt
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 5e-5
    pretrained_lr: float | None = None  # mode=full of a pretrained encoder: its weights' rate (None: lr)
    weight_decay: float = 0.01
    epochs: int = 30
    warmup_epochs: int = 0  # linear warm-up, then cosine decay when cosine is on; both off in the paper
    cosine: bool = False
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = "auto"  # number of devices, or a list
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | ...
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    seed: int = 0
    progress: bool = True
    log_every_n_steps: int = 10
    limit_train_batches: float | int = 1.0
    sanity_val_steps: int = 2  # validation batches run before training, so a bug there fails at once; 0: none
    record_samples: bool = False  # write RUN_DIR/samples/rank<r>.tsv: the clips each process trained on
    wandb_project: str | None = None  # also log to Weights & Biases (needs the wandb package)


MODES = ("full", "prompt", "lora", "probe")  # adaptation modes
POOLINGS = ("mean", "mean_std", "cov", "clip_attention")  # run-level features of probe and embed (train/pooling.py)
PROBES = ("linear", "attention", "mlp")  # heads of mode=probe on a frozen encoder's tokens (train/token_probe.py)
HARMONIZATIONS = ("none", "combat")  # of features by site (data/harmonize.py)


@dataclass
class ExperimentConfig:
    mode: str = "full"  # full | prompt | lora | probe (ignored by pretraining)
    pooling: str = "mean"  # probe and embed: mean (per clip) | mean_std | cov | clip_attention (per run)
    probe: str = "linear"  # mode=probe: linear (regularised, on pooled tokens) | attention | mlp (over tokens)
    probe_stage: int | None = None  # mode=probe: the encoder stage whose tokens it reads (1-based; None: last)
    probe_steps: int = 400  # probe=attention|mlp: AdamW steps of 64 clips per learning rate × weight decay
    head_standardise: bool = False  # full | prompt | lora: the head standardises embeddings (models/heads.Standardise)
    prompt_tokens: int = 50
    lora_rank: int = 8  # mode=lora: rank r of each update, scaled by lora_alpha / r
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("in_proj", "out_proj")  # linear layers adapted (the Mamba projections)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.pooling == "attention":  # the run-level pooling's name before the attentive probe over tokens
            warnings.warn("pooling=attention is now pooling=clip_attention (attention over a run's clip "
                          "embeddings); probe=attention is the attentive probe over a clip's tokens", stacklevel=3)
            self.pooling = "clip_attention"
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.probe not in PROBES:
            raise ValueError(f"probe must be one of {', '.join(PROBES)}, got {self.probe!r}")
        if self.probe_stage is not None and self.probe_stage < 1:
            raise ValueError(f"probe_stage counts stages from 1, got {self.probe_stage}")
        if self.data.harmonize not in HARMONIZATIONS:
            raise ValueError(f"data.harmonize must be one of {', '.join(HARMONIZATIONS)}, got {self.data.harmonize!r}")
        self.lora_targets = tuple(self.lora_targets)

    @property
    def probe_reads_tokens(self) -> bool:
        """Whether ``probe`` / ``probe_stage`` ask for a probe over a stage's tokens rather than the embedding."""
        return self.probe != "linear" or self.probe_stage is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "tiny": {"model": {"name": "neurostorm-tiny"}, "optim": {"lr": 1e-3, "epochs": 10},
             "data": {"batch_size": 4}, "trainer": {"sanity_val_steps": 0}},  # runs of seconds: no dry run
    "base": {"model": {"name": "neurostorm-base"}, "optim": {"lr": 5e-5, "weight_decay": 0.01, "epochs": 30},
             "data": {"batch_size": 8}},
}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a text"}


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotation ``hint`` wants it (a YAML ``1e-4`` string as a float, a number as a text),
    or a ValueError naming the setting and what it expects."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option, where)
            except ValueError:
                continue
        expected = " or ".join(_TYPE_NAMES.get(a, getattr(a, "__name__", str(a))) for a in args)
        raise ValueError(f"{where}: expected {expected.replace('NoneType', 'null')}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        element = args[0] if args else Any
        return origin(_typed(v, element, where) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping such as {{key: value}}, got {value!r}")
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if hint is str and not isinstance(value, bool) and isinstance(value, (str, int, float)):
        return str(value)
    if hint in _TYPE_NAMES:
        raise ValueError(f"{where}: expected {_TYPE_NAMES[hint]}, got {value!r}")
    return value


def _build(cls, values: dict, where: str):
    """Dataclass ``cls`` from a (nested) dict, refusing unknown keys and values of the wrong type."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kind = {"task": TaskConfig, "data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                "trainer": TrainerConfig}.get(name) if cls is ExperimentConfig else None
        if kind is not None:
            value = _build(kind, value, name)
        elif cls is DataConfig and name == "stores":
            if not isinstance(value, list):
                raise ValueError(f"{where}.stores: expected a list such as [store], got {value!r}")
            value = [_build(StoreSource, {"path": v} if isinstance(v, str) else v, f"{where}.stores") for v in value]
        else:
            value = _typed(value, hints[name], f"{where}.{name}" if where else name)
        kwargs[name] = value
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` → {"a": {"b": {"c": value}}} with the value read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def read_config_file(source: str | Path | None) -> dict:
    """The raw mapping of a preset or a YAML file (empty for None)."""
    if source is None:
        return {}
    if str(source) in PRESETS:
        return dict(PRESETS[str(source)])
    path = Path(source)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(path, f"not a readable YAML config ({err})") from err
    if not isinstance(values, dict):
        raise InputError(path, f"a config is a YAML mapping of sections, got {type(values).__name__}")
    return values


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """A preset name or a YAML file, then ``key=value`` overrides, validated into an ExperimentConfig."""
    values = read_config_file(source)
    values.pop("compare", None)  # the methods of a comparison's task.yaml (neurostorm.workflows.compare)
    for text in overrides:
        values = _merge(values, parse_override(text))
    try:
        config = _build(ExperimentConfig, values, "")
    except (TypeError, ValueError) as err:
        raise InputError(source or "config", str(err)) from err
    if "kind" not in (values.get("task") or {}):
        config.task.kind = default_task_kind(config)
    from neurostorm.models import MODELS  # the registry imports torch: only once a config is read

    if config.model.name not in MODELS:
        raise InputError(source or "config", f"unknown model.name {config.model.name!r}; available: "
                                             f"{', '.join(sorted(MODELS))}")
    return config


CLASSES_AT_MOST = 10  # a numeric label with more distinct values is read as a regression target unless told


def default_task_kind(config: ExperimentConfig) -> str:
    """The task kind of a config that names none: regression for a numeric label of the first store with more
    than :data:`CLASSES_AT_MOST` distinct values (age, a score), said in a warning; classification otherwise."""
    label, stores = config.task.label, config.data.stores
    if not label or not stores:
        return config.task.kind
    from neurostorm.data.store import Store

    try:
        manifest = Store(stores[0].path).manifest
    except (OSError, ValueError):
        return config.task.kind  # a missing or unreadable store is reported where it is read
    if label not in manifest.columns:
        return config.task.kind
    values = manifest.drop_duplicates("subject")[label].dropna()
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and numeric.nunique() > CLASSES_AT_MOST:
        warnings.warn(f"task.label={label}: a number with {numeric.nunique()} values, read as a regression target "
                      "(task.kind=classification reads its values as classes)", stacklevel=3)
        return "regression"
    return config.task.kind


def config_as_plain(config: ExperimentConfig, extra: dict | None = None) -> dict:
    """The complete configuration as plain YAML-ready values, with ``extra`` top-level sections."""
    return json.loads(json.dumps({**config.to_dict(), **(extra or {})}))  # tuples → lists for YAML


def save_config(config: ExperimentConfig, path: Path, extra: dict | None = None) -> None:
    """The complete configuration as YAML, with ``extra`` top-level sections (a comparison's methods)."""
    path.write_text(yaml.safe_dump(config_as_plain(config, extra), sort_keys=False))
