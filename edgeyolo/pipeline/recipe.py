"""A build's recipe: what each stage does, read from ``recipe.yaml`` and checked field by field."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from edgeyolo.errors import CfgError, EdgeYoloError, UsageError

DEMO_CFG = "edgeyolo-res"


@dataclass(frozen=True, eq=False)
class Percent:
    """The recipe's prune percent, parsed once when the recipe is made.

    :attr:`value` is what pruning gets: a fraction in [0, 1], ``"auto"`` (the largest safe percent) or
    ``"sparse"`` (the channels sparse training zeroed). ``given`` is the value as the recipe wrote it;
    the cache key and the manifest hold that, so a recipe keeps its keys (``0.5``, ``1`` and ``"0.5"``
    are three keys, as they always were). It compares equal to what it was given.
    """

    parsed: Union[float, str, None]  # None: kept unparsed by a recipe that prunes nothing
    given: Union[float, int, str]

    @classmethod
    def parse(cls, given: "Union[Percent, float, int, str]", *, check: bool = True) -> "Percent":
        """``given`` as a Percent; ``check=False`` (a recipe that prunes nothing) keeps a value that
        does not parse unparsed, as such a recipe always could."""
        from edgeyolo.compress.prune import parse_percent

        if isinstance(given, Percent):
            given = given.given
        _check_given(given)
        try:
            return cls(parse_percent(str(given), "recipe percent"), given)
        except UsageError:
            if check:
                raise
            return cls(None, given)

    @property
    def value(self) -> Union[float, str]:
        """A fraction in [0, 1], ``"auto"`` or ``"sparse"``."""
        if self.parsed is None:  # kept unparsed by a recipe that prunes nothing: the parse error
            return Percent.parse(self.given).value
        return self.parsed

    def __eq__(self, other: object) -> bool:
        return self.given == (other.given if isinstance(other, Percent) else other)

    def __hash__(self) -> int:
        return hash(self.given)

    def __str__(self) -> str:
        return str(self.given)


@dataclass(frozen=True)
class Recipe:
    """What each stage does; ``recipe.yaml`` overrides any field (unknown keys are errors)."""

    img_size: int = 416  # export and evaluation size
    train_img_size: Optional[int] = None  # the training stages' size (default: img_size)
    batch_size: int = 16
    workers: int = 2
    seed: int = 0
    cache: bool = False
    max_val_images: Optional[int] = None
    train_epochs: int = 0  # > 0: train (or fine-tune the given weights) before sparse training
    sparse_epochs: int = 0  # > 0: sparse training before pruning
    s: float = 0.001
    prune_mode: int = 1
    sr_penalty: str = "polar"
    sr_schedule: str = "constant"
    sr_target: float = 0.5  # dynamic schedule / gradual penalty: fraction of prunable γ to bring below 1e-2
    sr_ramp: float = 0.5  # gradual penalty: fraction of the sparse run by which sr_target is reached
    sr_rank: str = "magnitude"  # gradual penalty: magnitude | taylor
    aug: dict = field(default_factory=dict)  # augmentation strengths for the training stages (train --aug)
    prune_method: str = "slim"  # "none" skips pruning
    percent: Percent = Percent(0.5, 0.5)  # given as a fraction, "auto" or "sparse"; held as a Percent
    multiple: Optional[int] = None  # default: the target's channel multiple
    finetune_epochs: int = 0
    kd: Optional[int] = None  # --KDstr for the fine-tune, the unpruned model as teacher
    calib_images: int = 200
    quant_method: str = "percentile"
    evaluate: bool = True  # mAP@0.5 of each stage's model on the val split (needs data)
    bench_duration: float = 10.0

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("img_size", "train_img_size"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 32):
                raise UsageError(f"recipe {name} must be a positive multiple of 32, got {value}")
        for name in ("batch_size", "calib_images"):
            if getattr(self, name) <= 0:
                raise UsageError(f"recipe {name} must be positive, got {getattr(self, name)}")
        for name in ("train_epochs", "sparse_epochs", "finetune_epochs", "workers"):
            if getattr(self, name) < 0:
                raise UsageError(f"recipe {name} must be >= 0, got {getattr(self, name)}")
        if self.prune_mode not in (0, 1, 2):
            raise UsageError(f"recipe prune_mode must be 0, 1 or 2, got {self.prune_mode}")
        if self.kd is not None and self.kd not in range(1, 7):
            raise UsageError(f"recipe kd must be 1..6 (--KDstr), got {self.kd}")
        if not self.s >= 0 or not 0 < self.sr_target <= 1 or not 0 < self.sr_ramp <= 1 or not self.bench_duration > 0:
            raise UsageError(
                f"recipe s must be >= 0, sr_target and sr_ramp in (0, 1], bench_duration positive; got {self.s}, "
                f"{self.sr_target}, {self.sr_ramp}, {self.bench_duration}"
            )
        for name, choices in _choices().items():
            if getattr(self, name) not in choices:
                raise UsageError(f"recipe {name} must be one of {', '.join(map(str, choices))}; got {getattr(self, name)!r}")
        # parsed once here; a recipe that prunes nothing never needed a valid percent
        object.__setattr__(self, "percent", Percent.parse(self.percent, check=self.prune_method != "none"))
        if self.aug:
            from edgeyolo.train.trainer import TrainConfig

            TrainConfig(data="-", aug=dict(self.aug))  # validates the names and strengths

    @property
    def training_size(self) -> int:
        return self.train_img_size or self.img_size

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "Recipe":
        """Read a recipe file; a wrong key or value names ``file:line``."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--recipe {path}: {exc.strerror or exc}") from None
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise CfgError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path, mark.line + 1 if mark else None) from None
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        if root is not None:
            if not isinstance(root, yaml.MappingNode):
                raise CfgError("a recipe is a mapping of field: value", path, root.start_mark.line + 1)
            for key_node, value_node in root.value:
                key, line = key_node.value, key_node.start_mark.line + 1
                if key not in known:
                    raise CfgError(f"unknown recipe key '{key}' (known: {', '.join(known)})", path, line)
                values[key] = yaml.safe_load(yaml.serialize(value_node))
                try:
                    cls(**{key: values[key]})
                except (EdgeYoloError, TypeError) as exc:
                    raise CfgError(f"{key}: {exc}", path, line) from None
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["percent"] = self.percent.given
        return out


def _choices() -> dict[str, tuple]:
    """The recipe fields with a closed set of values, from the modules that define them."""
    from edgeyolo.compress.prune.methods import METHODS
    from edgeyolo.compress.quant.calib import METHODS as CALIBRATIONS
    from edgeyolo.train.sparsity import PENALTIES, RANKINGS, SparsitySchedule

    return {
        "sr_penalty": PENALTIES,
        "sr_schedule": tuple(s.value for s in SparsitySchedule),
        "sr_rank": RANKINGS,
        "prune_method": ("none", *METHODS.names()),
        "quant_method": CALIBRATIONS,
    }


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}


def _check_types(recipe: Recipe) -> None:
    """Each field holds its declared type (YAML gives ``2.5`` for an int field, ``maybe`` for a bool)."""
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        declared = str(f.type).replace("Optional[", "").rstrip("]")
        if value is None and "Optional" in str(f.type):
            continue
        if f.name == "percent":
            if not isinstance(value, Percent):
                _check_given(value)
            continue
        wanted = _TYPES.get(declared)
        if wanted is None:
            continue
        if isinstance(value, bool) and bool not in wanted or not isinstance(value, wanted):
            kind = {"float": "a number", "int": "an int"}.get(declared, f"a {declared}")
            raise UsageError(f"recipe {f.name} must be {kind}; got {value!r}")


def _check_given(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"recipe percent must be a fraction, 'auto' or 'sparse'; got {value!r}")


def demo_recipe(target: str, **overrides: Any) -> Recipe:
    """The embedded demo: the shipped dense checkpoint (``model.zoo.DEMO_CHECKPOINT``) sparse-trained with
    Taylor-ranked gradual sparsity, pruned at the target's channel multiple where γ went below 1e-2,
    fine-tuned, and exported at the target's smallest listed input size; every stage is scored on the
    300-image val split at that size. Training runs at 160 px, the size the checkpoint was trained at,
    so the whole build fits in minutes on a CPU."""
    from edgeyolo.targets.profiles import get_target

    base = {
        "img_size": get_target(target).input_sizes[0], "train_img_size": 160, "batch_size": 16, "workers": 0, "cache": True,
        "sparse_epochs": 8, "s": 0.1, "prune_mode": 1, "sr_penalty": "gradual", "sr_rank": "taylor", "sr_schedule": "dynamic",
        "sr_target": 0.45, "sr_ramp": 0.4, "prune_method": "slim", "percent": "sparse", "finetune_epochs": 4, "calib_images": 64,
    }
    return Recipe(**{**base, **overrides})
