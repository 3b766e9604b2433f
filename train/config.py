"""The training configuration: one dataclass, saved as `config.json` in every run dir.

    cfg = TrainConfig(data="../shared/data/ham10000", out="runs/ham", arch="mobilenetv2", img_size=160)
    cfg.save(Path(cfg.out) / "config.json"); TrainConfig.load(...)
    phase_plan(cfg)   # [("head", 2, 1e-3), ("finetune", 16, 1e-4), ("qat", 3, 1e-5)]: what fit.py trains, in order
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from skinedge.device.atomic import replaced_file

DEFAULT_WEIGHTS = "../shared/weights/mobilenet_v2_1.0_imagenet_no_top.h5"
DEFAULT_SEED = 42
MONITOR = "val_balanced_accuracy"  # what early stopping, checkpoints and weight averaging go by (mean per-class recall)
# class imbalance handling (--balance), and how each draws training images class by class (pipeline.class_draws);
# "weights" weights the loss instead, "none" trains at the data's own frequencies
BALANCE_MODES = ("weights", "oversample", "sqrt", "none")
OVERSAMPLE = {"oversample": "equal", "sqrt": "sqrt"}
AUGMENT_LEVELS = ("mild", "strong")  # --augment-level: how far augmentation goes (pipeline.AUGMENTATIONS)
# the settings a --float-from run chooses itself; every other one is the float run's (seed: of QAT alone, its split
# stays; deterministic: of this run's process)
FLOAT_FROM_CHOICES = ("settle_epochs", "qat_epochs", "qat_distill", "seed", "deterministic")


@dataclass
class TrainConfig:
    data: str  # data folder: HAM10000 layout (metadata csv + images/) or folder per class
    out: str  # run dir: config, split, labels, history, curves, checkpoints, models, metrics
    arch: str = "mobilenetv2"  # "mobilenetv2" (transfer learning) or "cnn" (compact from-scratch baseline)
    alpha: float = 1.0  # MobileNetV2 width multiplier; ImageNet weights exist for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4
    weights: str = "imagenet"  # "imagenet" (download), "none" (random init) or a path to a no-top .h5 file
    init_from: Optional[str] = None  # a finished run dir to start from instead (all but its head); the lesions it
    #   trained or validated on stay in this run's training split (HAM10000 before the ISIC set)
    leave_out: Optional[str] = None  # a run dir whose validation and test lesions this run leaves out entirely, so
    #   that run can --init-from this one without having seen them
    float_from: Optional[str] = None  # a finished run dir whose best float model QAT starts from, on its split and
    #   with its float settings: the float phases are not run again (to try QAT recipes on one float model)
    img_size: int = 128  # model input height in pixels (and width, unless img_width is set); MobileNetV2 works at
    #   any size >= 32
    img_width: Optional[int] = None  # model input width when it differs from the height: 256 with img_size 192 keeps
    #   the whole of a 4:3 image (HAM10000's 200x150) instead of its centre square. None = square
    head_epochs: int = 2  # float phase 1: train the new head with the backbone frozen (mobilenetv2 only)
    epochs: int = 10  # float phase 2: fine-tune (the upper backbone unfrozen for mobilenetv2, everything for cnn)
    settle_epochs: int = 0  # float phase 3: this many more epochs on unmixed images at a tenth of the fine-tuning lr,
    #   from the best fine-tuning weights (like Ultralytics' close_mosaic), kept if it scores higher on validation
    qat_epochs: int = 3  # phase 3: quantization-aware training starting from the best float weights
    qat_distill: float = 0.0  # QAT targets: this share of the float model's probabilities for the same image, the
    #   rest the labels (knowledge distillation; 1 = mimic the float model, keeping int8 close to it). 0 = off
    batch_size: int = 32  # images per step (across all replicas)
    lr: float = 1e-3  # learning rate of the head phase; fine-tuning uses lr/10, QAT lr/100 (cosine decay)
    finetune_from: float = 0.6  # fraction of the backbone's depth above which layers are unfrozen when fine-tuning
    label_smoothing: float = 0.05  # softens one-hot targets; helps calibration and QAT stability
    balance: str = "weights"  # class imbalance: "weights" (class-weighted loss), "oversample" (every class drawn
    #   equally often), "sqrt" (drawn in proportion to the square root of its count: milder) or "none"
    extra_train: Optional[str] = None  # another data set (folder per class or HAM10000) whose images join training
    #   only, never validation or test (more melanomas from another source); what repeats the data's is dropped
    extra_labels: dict[str, str] = field(default_factory=dict)  # extra_train class -> class of the data; classes
    #   named like one of the data's need no entry, the others are left out
    lesion_ids: Optional[str] = None  # CSV of image_id,lesion_id grouping a folder-per-class set's images by lesion
    val_fraction: float = 0.15  # share of lesions held out for validation (grouped by lesion_id)
    test_fraction: float = 0.15  # share of lesions held out as the test split, never used in training or tuning
    limit: Optional[int] = None  # use only this many images (stratified: every class keeps some) for quick runs
    patience: int = 4  # early stopping: epochs without val improvement before stopping a phase
    warmup_epochs: float = 0.0  # fine-tuning: ramp its learning rate up from 0 over this many epochs (Ultralytics'
    #   warmup_epochs): full-size first Adam steps on a whole pretrained backbone can knock it back to chance. 0 = off
    swa_epochs: int = 0  # fine-tuning: also average the weights of its last N epochs (SWA); the average replaces
    #   the best single epoch only if it scores higher on validation. 0 = off
    ema: float = 0.0  # fine-tuning: keep a moving average of the weights, this decay per step (0.998: about the
    #   last 500 steps once its warm-up, (1 + t) / (10 + t) at step t, passes 0.998 at step 4490), and validate,
    #   checkpoint and early-stop on it instead of the live weights (timm's ModelEmaV2, Ultralytics' ModelEMA). 0 = off
    mixup: float = 0.0  # float phases: blend each training image and its target with another's, the share drawn
    #   from Beta(mixup, mixup) (0.2-0.4 regularises); QAT trains on unmixed images. 0 = off
    seed: Optional[int] = DEFAULT_SEED  # seeds weight init, sampling and augmentation, and the split unless
    #   split_seed is set; None only before a --float-from run takes its float run's (then it seeds QAT alone)
    split_seed: Optional[int] = None  # seeds the split and --limit's sample alone (None: seed; stored resolved), so
    #   runs with different seeds can train on the very same split and be compared image for image
    augment: bool = True  # flips, rotation, zoom and colour jitter, as far as augment_level says
    augment_level: str = "mild"  # "mild" (small rotations, zoom and colour changes) or "strong" (any angle,
    #   deeper crops, stronger colour and a hue shift: for recipes that repeat rare classes many times an epoch)
    rot90: bool = False  # augmentation also transposes square images half the time: with the flips, all eight
    #   90-degree rotations and mirrorings of a lesion (the shipped recipes use it; off by default, since a config
    #   stored before the option existed must resume and retrain as it did)
    deterministic: bool = False  # TensorFlow's deterministic ops (tf.config.experimental.enable_op_determinism):
    #   the same command, data, machine and library versions give bit-identical weights, at some cost in speed;
    #   without it, CPU training differs from run to run by a few points of balanced accuracy
    cache_dir: Optional[str] = None  # where decoded images are cached (.npz); default: RUN_DIR/cache
    workers: int = 0  # image decoding processes; 0 = one per CPU core
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run (e.g. the command)

    def validate(self) -> None:
        if self.arch not in ("mobilenetv2", "cnn"):
            raise ValueError(f"unknown arch {self.arch!r}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"unknown balance mode {self.balance!r}")
        if self.augment_level not in AUGMENT_LEVELS:
            raise ValueError(f"unknown augment level {self.augment_level!r}")
        if self.img_size < 32 or (self.img_width is not None and self.img_width < 32):
            raise ValueError("img_size and img_width must be at least 32")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError("warmup_epochs must be between 0 and the number of fine-tuning epochs")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ValueError("swa_epochs must be between 0 and the number of fine-tuning epochs")
        if not 0 <= self.ema < 1:
            raise ValueError("ema must be between 0 (off) and 1 (exclusive)")
        if self.ema and self.swa_epochs:
            raise ValueError("ema and swa_epochs both average the fine-tuning weights: choose one")
        if self.settle_epochs < 0:
            raise ValueError("settle_epochs must be 0 (off) or more")
        if not 0 <= self.mixup <= 10:
            raise ValueError("mixup must be between 0 (off) and 10")
        if not 0 <= self.qat_distill <= 1:
            raise ValueError("qat_distill must be between 0 (labels only) and 1 (the float model only)")
        if self.seed is None and not self.float_from:
            raise ValueError("seed must be set (None only lets a float_from run take its float run's)")
        if self.extra_labels and not self.extra_train:
            raise ValueError("extra_labels name classes of extra_train, which is not set")
        if not 0 < self.val_fraction < 0.5 or not 0 <= self.test_fraction < 0.5:
            raise ValueError("val_fraction must be in (0, 0.5) and test_fraction in [0, 0.5)")

    @property
    def input_size(self) -> tuple[int, int]:
        """The model input as (height, width)."""
        return (self.img_size, self.img_width or self.img_size)

    def resolved_split_seed(self) -> Optional[int]:
        """The seed of the split: split_seed, or seed for configs that set none (and configs made before it)."""
        return resolve_split_seed(self.seed, self.split_seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        with replaced_file(path) as tmp:  # a kill or a full disk leaves the previous config.json whole
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        """A config from a stored config.json's contents; keys of other versions are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def resolve_split_seed(seed: Optional[int], split_seed: Optional[int]) -> Optional[int]:
    """The seed of a split: split_seed, or seed where none is set (configs made before --split-seed included)."""
    return seed if split_seed is None else split_seed


def phase_plan(cfg: TrainConfig) -> list[tuple[str, int, float]]:
    """(phase, epochs, peak learning rate) in order; phases with 0 epochs are skipped. Here rather than in fit.py,
    which imports TensorFlow, so that `skinedge runs` reads a run's progress by the same plan."""
    if cfg.arch == "cnn":
        plan = [("finetune", cfg.epochs, cfg.lr), ("settle", cfg.settle_epochs, cfg.lr / 10),
                ("qat", cfg.qat_epochs, cfg.lr / 10)]
    else:
        plan = [("head", cfg.head_epochs, cfg.lr), ("finetune", cfg.epochs, cfg.lr / 10),
                ("settle", cfg.settle_epochs, cfg.lr / 100), ("qat", cfg.qat_epochs, cfg.lr / 100)]
    return [p for p in plan if p[1] > 0]
