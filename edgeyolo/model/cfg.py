"""Darknet ``.cfg`` parsing and writing.

The cfg is the source of truth for the architecture: every later stage (pruning, export, board
checks) reads and writes it. Parsing turns sections into typed, frozen layer specs while keeping
every key the file had (training options darknet needs, even those edgeyolo ignores), so that
write → parse round-trips. Shape inference lives here too, free of torch, so tools that only need
shapes (``edgeyolo info``, target checks) never import it.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence, Union

from edgeyolo.errors import CfgError, InputFileError, UnsupportedLayerError, UsageError

log = logging.getLogger(__name__)

ACTIVATIONS = ("leaky", "mish", "linear", "relu", "logistic", "swish")

# Options of the form key=value are kept verbatim in ``options``; typed fields are the ones the
# model needs. When a typed field is changed (e.g. pruning sets ``filters``) the writer emits the
# new value in the original key's place.


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (tuple, list)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


class _Options:
    """Typed access to a section's raw options, raising CfgError at the offending line."""

    def __init__(self, section: str, options: dict[str, str], lines: dict[str, int], path: str, line: int):
        self.section = section
        self.options = options
        self.lines = lines
        self.path = path
        self.line = line
        self.used: set[str] = set()

    def error(self, message: str, key: str | None = None) -> CfgError:
        return CfgError(f"[{self.section}] {message}", self.path, self.lines.get(key, self.line) if key else self.line)

    def _get(self, key: str, default: Any, parse: Callable[[str], Any], kind: str) -> Any:
        self.used.add(key)
        if key not in self.options:
            if default is _REQUIRED:
                raise self.error(f"missing required option '{key}' ({kind})")
            return default
        raw = self.options[key]
        try:
            return parse(raw)
        except ValueError:
            raise self.error(f"bad value for '{key}': expected {kind}, got '{raw}'", key) from None

    def int(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, lambda s: int(s.strip()), "an integer")

    def float(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, lambda s: float(s.strip()), "a number")

    def str(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, lambda s: s.strip(), "a string")

    def ints(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, _parse_int_list, "a comma-separated list of integers")

    def floats(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, _parse_float_list, "a comma-separated list of numbers")

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.str(key, default)
        if value not in choices:
            raise self.error(f"bad value for '{key}': expected one of {', '.join(choices)}, got '{value}'", key)
        return value

    def positive(self, key: str, value: int) -> int:
        if value <= 0:
            raise self.error(f"'{key}' must be positive, got {value}", key)
        return value

    def reject_nondefault(self, unsupported: dict[str, str]) -> None:
        """Options darknet honours but edgeyolo does not: refuse rather than silently ignore."""
        for key, default in unsupported.items():
            if key in self.options and self.options[key].strip() != default:
                raise UnsupportedLayerError(
                    f"[{self.section}] option '{key}={self.options[key].strip()}' is not supported by edgeyolo "
                    f"(only {key}={default})",
                    self.path,
                    self.lines[key],
                )


# ------------------------------------------------------------------------------------- known keys
#
# The keys darknet-AB's parser reads, per section. Darknet itself only prints "Unused field" for any
# other key and carries on with its default, so ``fliters=16`` gives a one-filter conv and
# ``batch_normalise=1`` a conv without batch norm. Here every other key is an error at its line.
# Each known key is in one of four groups:
#   used      what edgeyolo builds the model from;
#   refused   honoured by darknet but not implemented here: an error unless it has its default
#             (checked by the section's parser with ``reject_nondefault``);
#   training  darknet's training, scheduling and bookkeeping options: no effect on what the model
#             computes at inference; kept verbatim so that write -> parse round-trips;
#   ignored   change what darknet outputs at inference, but edgeyolo does its own thing: warned
#             about once per file and key (see ``_IGNORED``).

_EVERY_LAYER = (
    "clip", "onlyforward", "dont_update", "burnin_update", "stopbackward", "train_only_bn", "learning_rate",
    "dontload", "dontloadscales",
)

_NET_KEYS = (
    "width", "height", "channels", "inputs",
    "batch", "subdivisions", "max_batches", "learning_rate", "learning_rate_min", "sgdr_cycle", "sgdr_mult",
    "momentum", "decay", "time_steps", "track", "augment_speed", "sequential_subdivisions", "try_fix_nan",
    "weights_reject_freq", "equidistant_point", "badlabels_rejection_percentage", "num_sigmas_reject_badlabels",
    "ema_alpha", "use_cuda_graph", "loss_scale", "dynamic_minibatch", "optimized_memory", "workspace_size_limit_MB",
    "adam", "B1", "B2", "eps", "max_crop", "min_crop", "flip", "blur", "gaussian_noise", "mixup", "cutmix", "mosaic",
    "letter_box", "mosaic_bound", "contrastive", "contrastive_jit_flip", "contrastive_color", "unsupervised",
    "label_smooth_eps", "resize_step", "attention", "adversarial_lr", "max_chart_loss", "angle", "aspect",
    "saturation", "exposure", "hue", "power", "policy", "burn_in", "step", "scale", "steps", "scales", "seq_scales",
    "gamma", "show_receptive_field", "stopbackward",
    # the original (pjreddie) darknet's [net] options that darknet-AB dropped
    "notruth", "random", "max_ratio", "min_ratio", "center", "clip",
)

SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "net": _NET_KEYS,
    "convolutional": (
        "filters", "size", "stride", "stride_x", "stride_y", "pad", "padding", "groups", "batch_normalize", "cbn",
        "activation",
        "dilation", "antialiasing", "share_index", "binary", "xnor", "sway", "rotate", "stretch", "stretch_sway",
        "flipped", "coordconv", "deform",
        "bin_output", "assisted_excitation", "dot", "angle", "grad_centr", "reverse", "stream", "wait_stream",
        *_EVERY_LAYER,
    ),
    "maxpool": (
        "size", "stride", "stride_x", "stride_y", "padding", "maxpool_depth", "out_channels", "antialiasing",
        "maxpool_zero_nonmax", *_EVERY_LAYER,
    ),
    "avgpool": _EVERY_LAYER,
    "route": ("layers", "groups", "group_id", "stream", "wait_stream", *_EVERY_LAYER),
    "shortcut": ("from", "activation", "weights_type", "weights_normalization", *_EVERY_LAYER),
    "upsample": ("stride", "scale", *_EVERY_LAYER),
    "scale_channels": ("from", "scale_wh", "activation", *_EVERY_LAYER),
    "dropout": ("probability", "dropblock", "dropblock_size_rel", "dropblock_size_abs", *_EVERY_LAYER),
    "yolo": (
        "classes", "num", "mask", "anchors", "scale_x_y", "new_coords",
        "nms_kind", "beta_nms",
        "max", "show_details", "max_delta", "counters_per_class", "label_smooth_eps", "objectness_smooth",
        "iou_normalizer", "obj_normalizer", "cls_normalizer", "delta_normalizer", "iou_loss", "iou_thresh_kind",
        "jitter", "resize", "focal_loss", "ignore_thresh", "truth_thresh", "iou_thresh", "random",
        "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show", "track_ciou_norm", "embedding_layer",
        "map", *_EVERY_LAYER,
    ),
}
_ALIASES = {"network": "net", "conv": "convolutional", "max": "maxpool", "avg": "avgpool"}

# (section, key) -> (values that match what edgeyolo does, what edgeyolo does instead)
_IGNORED: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("yolo", "nms_kind"): (
        ("default", "greedynms"),
        "edgeyolo applies plain greedy NMS (detect/test --iou), not darknet's DIoU or corners NMS",
    ),
}
_warned: set[tuple[str, str, str]] = set()


def _check_keys(section: str, options: dict[str, str], lines: dict[str, int], path: str) -> None:
    """Refuse keys darknet does not read (at their line, with the nearest known key); warn, once per
    file and key, about the few that change darknet's output but that edgeyolo does not reproduce."""
    name = _ALIASES.get(section, section)
    known = SECTION_KEYS[name]
    for key, value in options.items():
        if key not in known:
            raise CfgError(_unknown_key_message(name, key, known), path, lines[key])
        ignored = _IGNORED.get((name, key))
        if ignored and value.strip() not in ignored[0] and (path, name, key) not in _warned:
            _warned.add((path, name, key))
            log.warning("%s:%d: [%s] %s=%s is ignored: %s", path, lines[key], name, key, value.strip(), ignored[1])


def _unknown_key_message(section: str, key: str, known: Sequence[str]) -> str:
    message = f"[{section}] unknown option '{key}'"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or difflib.get_close_matches(
        key.lower(), [k.lower() for k in known], n=1, cutoff=0.6
    )
    if close:
        nearest = next(k for k in known if k.lower() == close[0].lower())
        return f"{message}; did you mean '{nearest}'? (darknet would ignore it and use the default)"
    elsewhere = sorted(s for s, keys in SECTION_KEYS.items() if key in keys)
    if elsewhere:
        return f"{message}; it is an option of [{'], ['.join(elsewhere)}], not of [{section}]"
    main = [k for k in known if k not in _EVERY_LAYER][:8]
    return f"{message}; darknet reads none such here (the main ones: {', '.join(main)})"


_REQUIRED = object()


def _parse_int_list(text: str) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(text)
    return tuple(int(t) for t in items)


def _parse_float_list(text: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(text)
    return tuple(float(t) for t in items)


@dataclass(frozen=True)
class LayerSpec:
    """One darknet section after ``[net]``. ``index`` is its darknet layer number."""

    index: int
    options: dict[str, str] = field(repr=False, compare=False)
    line: int = field(default=0, compare=False)
    key_lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    section: ClassVar[str] = ""
    # typed field name -> cfg key written back on output
    keys: ClassVar[dict[str, str]] = {}

    def to_options(self) -> dict[str, str]:
        """Raw options with typed fields written back (in their original position when present)."""
        out = dict(self.options)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for attr, key in self.keys.items():
            value = getattr(self, attr)
            if value is None or (key not in out and value == defaults.get(attr)):
                continue
            text = _fmt(value)
            if key in out and _same_value(out[key], text):
                continue
            out[key] = text
        return out


def _same_value(raw: str, text: str) -> bool:
    """True when a raw option and a formatted typed value mean the same (keeps the file's spelling)."""
    a = [t.strip() for t in raw.split(",") if t.strip()]
    b = [t.strip() for t in text.split(",") if t.strip()]
    if len(a) != len(b):
        return False
    try:
        return all(float(x) == float(y) for x, y in zip(a, b))
    except ValueError:
        return a == b


@dataclass(frozen=True)
class ConvSpec(LayerSpec):
    filters: int = 1
    size: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"

    section: ClassVar[str] = "convolutional"
    keys: ClassVar[dict[str, str]] = {"filters": "filters", "groups": "groups"}


@dataclass(frozen=True)
class ShortcutSpec(LayerSpec):
    source: int = -1  # absolute index of the ``from`` layer
    activation: str = "linear"

    section: ClassVar[str] = "shortcut"


@dataclass(frozen=True)
class RouteSpec(LayerSpec):
    layers: tuple[int, ...] = ()  # absolute indices
    groups: int = 1
    group_id: int = 0

    section: ClassVar[str] = "route"


@dataclass(frozen=True)
class UpsampleSpec(LayerSpec):
    stride: int = 2

    section: ClassVar[str] = "upsample"


@dataclass(frozen=True)
class MaxPoolSpec(LayerSpec):
    size: int = 1
    stride: int = 1
    padding: int = 0  # darknet total padding (left gets padding // 2)

    section: ClassVar[str] = "maxpool"


@dataclass(frozen=True)
class AvgPoolSpec(LayerSpec):
    """Darknet's avgpool is global average pooling."""

    section: ClassVar[str] = "avgpool"


@dataclass(frozen=True)
class ScaleChannelsSpec(LayerSpec):
    source: int = -1  # absolute index of the feature map being scaled
    activation: str = "linear"

    section: ClassVar[str] = "scale_channels"


@dataclass(frozen=True)
class DropoutSpec(LayerSpec):
    probability: float = 0.5

    section: ClassVar[str] = "dropout"


@dataclass(frozen=True)
class YoloSpec(LayerSpec):
    mask: tuple[int, ...] = ()
    anchors: tuple[tuple[float, float], ...] = ()  # all anchors of the model, (w, h) in input pixels
    classes: int = 80
    scale_x_y: float = 1.0

    section: ClassVar[str] = "yolo"
    keys: ClassVar[dict[str, str]] = {"classes": "classes"}

    @property
    def masked_anchors(self) -> tuple[tuple[float, float], ...]:
        return tuple(self.anchors[m] for m in self.mask)

    @property
    def num_outputs(self) -> int:
        return 5 + self.classes


Layer = Union[ConvSpec, ShortcutSpec, RouteSpec, UpsampleSpec, MaxPoolSpec, AvgPoolSpec, ScaleChannelsSpec, DropoutSpec, YoloSpec]


@dataclass(frozen=True)
class NetSpec:
    options: dict[str, str] = field(repr=False)
    width: int = 416
    height: int = 416
    channels: int = 3
    line: int = 1

    def to_options(self) -> dict[str, str]:
        out = dict(self.options)
        for key in ("width", "height", "channels"):
            if key not in out or not _same_value(out[key], str(getattr(self, key))):
                out[key] = str(getattr(self, key))
        return out


@dataclass(frozen=True)
class Cfg:
    """A parsed darknet model definition."""

    net: NetSpec
    layers: tuple[Layer, ...]
    path: str = "<cfg>"
    # key order and comments are not kept; everything else is

    @property
    def yolo_indices(self) -> list[int]:
        return [layer.index for layer in self.layers if isinstance(layer, YoloSpec)]

    @property
    def yolo_layers(self) -> list[YoloSpec]:
        return [layer for layer in self.layers if isinstance(layer, YoloSpec)]

    @property
    def conv_layers(self) -> list[ConvSpec]:
        return [layer for layer in self.layers if isinstance(layer, ConvSpec)]

    @property
    def num_classes(self) -> int:
        heads = self.yolo_layers
        return heads[0].classes if heads else 0

    def replace_layer(self, layer: Layer) -> "Cfg":
        layers = list(self.layers)
        layers[layer.index] = layer
        return dataclasses.replace(self, layers=tuple(layers))


# --------------------------------------------------------------------------------------------- parse


def _read_sections(text: str, path: str) -> list[tuple[str, int, dict[str, str], dict[str, int]]]:
    sections: list[tuple[str, int, dict[str, str], dict[str, int]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"malformed section header '{line}'; expected '[name]'", path, number)
            sections.append((line[1:-1].strip().lower(), number, {}, {}))
            continue
        if "=" not in line:
            raise CfgError(f"expected 'key=value', got '{line}'", path, number)
        if not sections:
            raise CfgError(f"option '{line}' before the first section; a cfg starts with [net]", path, number)
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise CfgError(f"empty key in '{line}'", path, number)
        _, _, options, lines = sections[-1]
        if key in options:
            raise CfgError(f"duplicate option '{key}' (first at line {lines[key]})", path, number)
        options[key] = value
        lines[key] = number
    return sections


def _absolute(opts: _Options, key: str, value: int, index: int) -> int:
    target = index + value if value < 0 else value
    if not 0 <= target < index:
        raise opts.error(
            f"'{key}' refers to layer {value} (absolute {target}); it must name an earlier layer 0..{index - 1}", key
        )
    return target


def _parse_conv(o: _Options, index: int) -> ConvSpec:
    o.reject_nondefault(
        {
            "dilation": "1", "xnor": "0", "binary": "0", "antialiasing": "0", "deform": "0", "sway": "0",
            "rotate": "0", "stretch": "0", "stretch_sway": "0", "flipped": "0", "coordconv": "0",
        }
    )
    if "share_index" in o.options:  # any value names a layer whose weights this one would use
        raise UnsupportedLayerError(
            "[convolutional] 'share_index' (weights shared with another layer) is not supported by edgeyolo",
            o.path,
            o.lines["share_index"],
        )
    filters = o.positive("filters", o.int("filters", 1))
    size = o.positive("size", o.int("size", 1))
    stride = o.positive("stride", o.int("stride", 1))
    for key in ("stride_x", "stride_y"):
        if o.int(key, stride) != stride:
            raise UnsupportedLayerError(f"[convolutional] '{key}' different from 'stride' is not supported", o.path, o.lines[key])
    pad = o.int("pad", 0)
    padding = size // 2 if pad else o.int("padding", 0)
    if padding < 0:
        raise o.error(f"'padding' must be >= 0, got {padding}", "padding")
    groups = o.positive("groups", o.int("groups", 1))
    if filters % groups:
        raise o.error(f"filters={filters} is not divisible by groups={groups}", "groups")
    return ConvSpec(
        index,
        o.options,
        o.line,
        o.lines,
        filters=filters,
        size=size,
        stride=stride,
        padding=padding,
        groups=groups,
        # cbn (cross-iteration batch norm) trains differently but infers, and is stored, as batch norm
        batch_normalize=bool(o.int("batch_normalize", 0)) or bool(o.int("cbn", 0)),
        activation=o.choice("activation", "logistic", ACTIVATIONS),
    )


def _parse_shortcut(o: _Options, index: int) -> ShortcutSpec:
    sources = o.ints("from", _REQUIRED)
    if len(sources) != 1:
        raise UnsupportedLayerError("[shortcut] with more than one 'from' layer is not supported", o.path, o.lines["from"])
    o.reject_nondefault({"weights_type": "none"})
    return ShortcutSpec(
        index,
        o.options,
        o.line,
        o.lines,
        source=_absolute(o, "from", sources[0], index),
        activation=o.choice("activation", "linear", ACTIVATIONS),
    )


def _parse_route(o: _Options, index: int) -> RouteSpec:
    raw = o.ints("layers", _REQUIRED)
    groups = o.positive("groups", o.int("groups", 1))
    group_id = o.int("group_id", 0)
    if not 0 <= group_id < groups:
        raise o.error(f"group_id={group_id} must lie in 0..{groups - 1}", "group_id")
    return RouteSpec(
        index,
        o.options,
        o.line,
        o.lines,
        layers=tuple(_absolute(o, "layers", v, index) for v in raw),
        groups=groups,
        group_id=group_id,
    )


def _parse_upsample(o: _Options, index: int) -> UpsampleSpec:
    stride = o.int("stride", 2)
    if stride <= 0:
        raise UnsupportedLayerError("[upsample] with stride <= 0 (downsampling) is not supported", o.path, o.lines.get("stride", o.line))
    if o.float("scale", 1.0) != 1.0:
        raise UnsupportedLayerError("[upsample] 'scale' other than 1 is not supported", o.path, o.lines["scale"])
    return UpsampleSpec(index, o.options, o.line, o.lines, stride=stride)


def _parse_maxpool(o: _Options, index: int) -> MaxPoolSpec:
    o.reject_nondefault({"maxpool_depth": "0", "antialiasing": "0", "out_channels": "1", "maxpool_zero_nonmax": "0"})
    size = o.positive("size", o.int("size", 1))
    stride = o.positive("stride", o.int("stride", size))
    for key in ("stride_x", "stride_y"):
        if o.int(key, stride) != stride:
            raise UnsupportedLayerError(f"[maxpool] '{key}' different from 'stride' is not supported", o.path, o.lines[key])
    padding = o.int("padding", size - 1)
    if padding < 0:
        raise o.error(f"'padding' must be >= 0, got {padding}", "padding")
    return MaxPoolSpec(index, o.options, o.line, o.lines, size=size, stride=stride, padding=padding)


def _parse_avgpool(o: _Options, index: int) -> AvgPoolSpec:
    return AvgPoolSpec(index, o.options, o.line, o.lines)


def _parse_scale_channels(o: _Options, index: int) -> ScaleChannelsSpec:
    o.reject_nondefault({"scale_wh": "0"})
    return ScaleChannelsSpec(
        index,
        o.options,
        o.line,
        o.lines,
        source=_absolute(o, "from", o.int("from", _REQUIRED), index),
        activation=o.choice("activation", "linear", ACTIVATIONS),
    )


def _parse_dropout(o: _Options, index: int) -> DropoutSpec:
    p = o.float("probability", 0.5)
    if not 0.0 <= p < 1.0:
        raise o.error(f"'probability' must lie in [0, 1), got {p}", "probability")
    return DropoutSpec(index, o.options, o.line, o.lines, probability=p)


def _parse_yolo(o: _Options, index: int) -> YoloSpec:
    o.reject_nondefault({"new_coords": "0"})
    classes = o.int("classes", 20)
    if classes <= 0:
        raise o.error(f"'classes' must be positive, got {classes}", "classes")
    flat = o.floats("anchors", _REQUIRED)
    if len(flat) % 2:
        raise o.error(f"'anchors' needs pairs of numbers (w,h); got {len(flat)} values", "anchors")
    anchors = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
    num = o.int("num", len(anchors))
    if num != len(anchors):
        raise o.error(f"num={num} but 'anchors' lists {len(anchors)} pairs", "num")
    mask = o.ints("mask", tuple(range(num)))
    for m in mask:
        if not 0 <= m < num:
            raise o.error(f"mask index {m} is out of range for {num} anchors", "mask")
    return YoloSpec(index, o.options, o.line, o.lines, mask=mask, anchors=anchors, classes=classes, scale_x_y=o.float("scale_x_y", 1.0))


_PARSERS: dict[str, Callable[[_Options, int], LayerSpec]] = {
    "convolutional": _parse_conv,
    "conv": _parse_conv,
    "shortcut": _parse_shortcut,
    "route": _parse_route,
    "upsample": _parse_upsample,
    "maxpool": _parse_maxpool,
    "max": _parse_maxpool,
    "avgpool": _parse_avgpool,
    "avg": _parse_avgpool,
    "scale_channels": _parse_scale_channels,
    "dropout": _parse_dropout,
    "yolo": _parse_yolo,
}

_DARKNET_ONLY = (
    "connected", "local", "region", "detection", "crnn", "rnn", "lstm", "gru", "conv_lstm", "softmax",
    "cost", "reorg", "reorg3d", "batchnorm", "sam", "gaussian_yolo", "local_avgpool", "contrastive",
    "implicit_add", "implicit_mul", "empty", "silence", "crop", "normalization", "activation",
)


def parse_cfg_text(text: str, path: str | Path = "<cfg>") -> Cfg:
    """Parse cfg text; every structural problem raises CfgError(path, line)."""
    path = str(path)
    sections = _read_sections(text, path)
    if not sections:
        raise CfgError("no sections found; a cfg starts with [net]", path, 1)
    name, line, options, lines = sections[0]
    if name not in ("net", "network"):
        raise CfgError(f"the first section must be [net], got [{name}]", path, line)
    _check_keys("net", options, lines, path)
    o = _Options("net", options, lines, path, line)
    net = NetSpec(
        options,
        width=o.positive("width", o.int("width", 416)),
        height=o.positive("height", o.int("height", 416)),
        channels=o.positive("channels", o.int("channels", 3)),
        line=line,
    )
    layers: list[LayerSpec] = []
    for index, (name, line, options, lines) in enumerate(sections[1:]):
        parser = _PARSERS.get(name)
        if parser is None:
            if name in _DARKNET_ONLY:
                raise UnsupportedLayerError(f"layer type [{name}] is not supported by edgeyolo", path, line)
            known = ", ".join(sorted(set(_PARSERS) - {"conv", "max", "avg"}))
            raise CfgError(f"unknown section [{name}]; expected one of: net, {known}", path, line)
        _check_keys(name, options, lines, path)
        opts = _Options(name, options, lines, path, line)
        # darknet reads these two in every layer: without the layer's weights in the file, or without
        # its BN scales, the file layout is not the cfg's
        opts.reject_nondefault({"dontload": "0", "dontloadscales": "0"})
        layers.append(parser(opts, index))
    if not layers:
        raise CfgError("the cfg has a [net] section but no layers", path, net.line)
    cfg = Cfg(net=net, layers=tuple(layers), path=path)
    _check_heads(cfg)
    check_model_size(cfg, infer_shapes(cfg))
    return cfg


def parse_cfg(path: str | Path) -> Cfg:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(f"cfg file not found: {path}") from None
    except IsADirectoryError:
        raise InputFileError(f"expected a cfg file, got a directory: {path}") from None
    except UnicodeDecodeError as exc:
        raise CfgError(f"not a text file ({exc.reason} at byte {exc.start})", path, None) from None
    return parse_cfg_text(text, path)


def _check_heads(cfg: Cfg) -> None:
    """Each [yolo] must be fed by a conv with len(mask) * (classes + 5) filters."""
    for yolo in cfg.yolo_layers:
        if yolo.index == 0:
            raise CfgError("[yolo] cannot be the first layer", cfg.path, yolo.line)
        prev = cfg.layers[yolo.index - 1]
        want = len(yolo.mask) * (yolo.classes + 5)
        if isinstance(prev, ConvSpec) and prev.filters != want:
            raise CfgError(
                f"[convolutional] filters={prev.filters} is inconsistent with the [yolo] layer at line {yolo.line}: "
                f"expected len(mask) * (classes + 5) = {len(yolo.mask)} * ({yolo.classes} + 5) = {want}",
                cfg.path,
                prev.line_of("filters"),
            )


# --------------------------------------------------------------------------------------------- shapes


Shape = tuple[int, int, int]  # (C, H, W)


def maxpool_geometry(spec: MaxPoolSpec, h: int, w: int) -> tuple[int, int, int, int]:
    """(out_h, out_w, pad_left/top, pad_total) in darknet's convention (-FLT_MAX padding)."""
    out_h = (h + spec.padding - spec.size) // spec.stride + 1
    out_w = (w + spec.padding - spec.size) // spec.stride + 1
    return out_h, out_w, spec.padding // 2, spec.padding


def infer_shapes(cfg: Cfg, height: int | None = None, width: int | None = None) -> list[Shape]:
    """Output shape of every layer for an input of the given size (default: [net])."""
    h = height or cfg.net.height
    w = width or cfg.net.width
    c = cfg.net.channels
    shapes: list[Shape] = []
    prev: Shape = (c, h, w)

    def fail(layer: LayerSpec, message: str) -> CfgError:
        return CfgError(f"[{layer.section}] {message} (input {h}x{w})", cfg.path, layer.line)

    for layer in cfg.layers:
        if isinstance(layer, ConvSpec):
            if prev[0] % layer.groups:
                raise fail(layer, f"input channels {prev[0]} are not divisible by groups={layer.groups}")
            oh = (prev[1] + 2 * layer.padding - layer.size) // layer.stride + 1
            ow = (prev[2] + 2 * layer.padding - layer.size) // layer.stride + 1
            if oh <= 0 or ow <= 0:
                raise fail(layer, f"the feature map {prev[1]}x{prev[2]} is too small for size={layer.size}")
            out: Shape = (layer.filters, oh, ow)
        elif isinstance(layer, ShortcutSpec):
            src = shapes[layer.source]
            if src != prev:
                raise fail(layer, f"shortcut adds layer {layer.source} of shape {src} to the previous layer of shape {prev}; shapes must match")
            out = prev
        elif isinstance(layer, RouteSpec):
            parts = [shapes[i] for i in layer.layers]
            for i, s in zip(layer.layers, parts):
                if s[1:] != parts[0][1:]:
                    raise fail(layer, f"route joins feature maps of different sizes: layer {layer.layers[0]} is {parts[0][1]}x{parts[0][2]}, layer {i} is {s[1]}x{s[2]}")
                if s[0] % layer.groups:
                    raise fail(layer, f"layer {i} has {s[0]} channels, not divisible by groups={layer.groups}")
            out = (sum(s[0] // layer.groups for s in parts), parts[0][1], parts[0][2])
        elif isinstance(layer, UpsampleSpec):
            out = (prev[0], prev[1] * layer.stride, prev[2] * layer.stride)
        elif isinstance(layer, MaxPoolSpec):
            oh, ow, _, _ = maxpool_geometry(layer, prev[1], prev[2])
            if oh <= 0 or ow <= 0:
                raise fail(layer, f"the feature map {prev[1]}x{prev[2]} is too small for size={layer.size}")
            out = (prev[0], oh, ow)
        elif isinstance(layer, AvgPoolSpec):
            out = (prev[0], 1, 1)
        elif isinstance(layer, ScaleChannelsSpec):
            src = shapes[layer.source]
            if prev[0] != src[0] or prev[1:] != (1, 1):
                raise fail(layer, f"scale_channels needs a [C,1,1] input matching layer {layer.source}'s {src[0]} channels, got {prev}")
            out = src
        elif isinstance(layer, DropoutSpec):
            out = prev
        elif isinstance(layer, YoloSpec):
            want = len(layer.mask) * layer.num_outputs
            if prev[0] != want:
                raise fail(layer, f"[yolo] input has {prev[0]} channels; expected len(mask) * (classes + 5) = {want}")
            out = prev
        else:  # pragma: no cover - parse_cfg only builds the types above
            raise AssertionError(type(layer))
        shapes.append(out)
        prev = out
    return shapes


# The largest darknet detectors hold 6.4e7 parameters (yolov4) and their largest feature map at 608 px
# has 5.9e6 values. A cfg beyond these bounds is a typo (filters=99999999): refuse it here, with its
# line, instead of letting the allocator fail with a traceback or the machine swap.
MAX_PARAMETERS = 1_000_000_000  # 4 GB of fp32 weights
MAX_FEATURE_MAP = 1 << 31  # values in one layer's output at batch 1 (8 GiB of fp32)


def _layer_parameters(layer: LayerSpec, in_channels: int) -> int:
    if not isinstance(layer, ConvSpec):
        return 0
    return layer.filters * (in_channels // layer.groups) * layer.size**2 + (2 if layer.batch_normalize else 1) * layer.filters


def check_model_size(cfg: Cfg, shapes: Sequence[Shape] | None = None) -> None:
    """CfgError when a layer's weights or output, or the whole model's weights, are absurdly large."""
    shapes = infer_shapes(cfg) if shapes is None else shapes
    total = 0
    largest: tuple[int, LayerSpec | None] = (0, None)
    in_channels = cfg.net.channels
    for layer, shape in zip(cfg.layers, shapes):
        params = _layer_parameters(layer, in_channels)
        line = layer.line_of("filters") if isinstance(layer, ConvSpec) else layer.line
        if params > MAX_PARAMETERS:
            raise CfgError(
                f"[{layer.section}] layer {layer.index} would hold {params:.3g} parameters ({4 * params / 1e9:.3g} GB); "
                f"refusing anything over {MAX_PARAMETERS:.0e} (yolov4 holds 6.4e7): check filters= and size=",
                cfg.path,
                line,
            )
        values = shape[0] * shape[1] * shape[2]
        if values > MAX_FEATURE_MAP:
            raise CfgError(
                f"[{layer.section}] layer {layer.index} would output {shape[0]}x{shape[1]}x{shape[2]} = {values:.3g} values "
                f"per image ({4 * values / 2**30:.3g} GiB); refusing anything over {MAX_FEATURE_MAP:.3g}: check filters= "
                "and the [net] width/height",
                cfg.path,
                line,
            )
        total += params
        largest = max(largest, (params, layer), key=lambda t: t[0])
        in_channels = shape[0]
    if total > MAX_PARAMETERS and largest[1] is not None:
        layer = largest[1]
        raise CfgError(
            f"the model would hold {total:.3g} parameters ({4 * total / 1e9:.3g} GB), the largest layer {layer.index} "
            f"{largest[0]:.3g}; refusing anything over {MAX_PARAMETERS:.0e} (yolov4 holds 6.4e7)",
            cfg.path,
            layer.line_of("filters"),
        )


# --------------------------------------------------------------------------------------------- write


def format_cfg(cfg: Cfg) -> str:
    """Darknet text for a cfg. Routes and shortcuts keep the relative/absolute form they were written in."""
    blocks = [_block("net", cfg.net.to_options())]
    for layer in cfg.layers:
        options = layer.to_options()
        if isinstance(layer, RouteSpec):
            options["layers"] = _format_refs(layer.options.get("layers"), layer.layers, layer.index)
            for key, value, default in (("groups", layer.groups, 1), ("group_id", layer.group_id, 0)):
                if value != default or key in options:
                    options[key] = str(value)
        elif isinstance(layer, (ShortcutSpec, ScaleChannelsSpec)):
            options["from"] = _format_refs(layer.options.get("from"), (layer.source,), layer.index)
        blocks.append(_block(layer.section, options))
    return "\n".join(blocks)


def _format_refs(raw: str | None, absolute: Iterable[int], index: int) -> str:
    absolute = list(absolute)
    relative_style = [True] * len(absolute)
    if raw is not None:
        try:
            old = _parse_int_list(raw)
        except ValueError:
            old = ()
        if [index + v if v < 0 else v for v in old] == absolute:
            return raw  # unchanged: keep the file's own spelling
        if len(old) == len(absolute):
            relative_style = [v < 0 for v in old]
    return ", ".join(str(a - index if rel else a) for a, rel in zip(absolute, relative_style))


def _block(name: str, options: dict[str, str]) -> str:
    return f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in options.items())


def write_cfg(cfg: Cfg, path: str | Path) -> Path:
    from edgeyolo.fileio import atomic_write_text

    return atomic_write_text(Path(path), format_cfg(cfg))


def with_classes(cfg: Cfg, classes: int) -> Cfg:
    """``cfg`` for ``classes`` classes: every ``[yolo]`` layer's ``classes=`` and the ``filters=`` of the
    conv feeding it (anchors per layer × (5 + classes)); nothing else depends on the class count."""
    if classes < 1:
        raise UsageError(f"a detector needs at least one class, got {classes}")
    for yolo in cfg.yolo_layers:
        cfg = cfg.replace_layer(dataclasses.replace(yolo, classes=classes))
        head = cfg.layers[yolo.index - 1]
        if isinstance(head, ConvSpec):
            cfg = cfg.replace_layer(dataclasses.replace(head, filters=len(yolo.mask) * (classes + 5)))
    return cfg


def with_input_size(cfg: Cfg, height: int, width: int | None = None) -> Cfg:
    net = dataclasses.replace(cfg.net, height=height, width=width or height)
    return dataclasses.replace(cfg, net=net)


# --------------------------------------------------------------------------------------------- flops


@dataclass(frozen=True)
class LayerInfo:
    index: int
    type: str
    filters: int | None
    size: str
    input: Shape
    output: Shape
    bflops: float
    params: int


def layer_table(cfg: Cfg, img_size: int | None = None) -> list[LayerInfo]:
    """Per-layer shapes, parameters and BFLOPs in darknet-AB's convention.

    conv: 2·MAC; maxpool: k²·C·out_h·out_w; shortcut: one add per output element.
    """
    h = w = img_size
    shapes = infer_shapes(cfg, h, w)
    rows = []
    prev: Shape = (cfg.net.channels, h or cfg.net.height, w or cfg.net.width)
    for layer, out in zip(cfg.layers, shapes):
        bflops = 0.0
        params = 0
        filters = None
        size = ""
        inp = prev
        if isinstance(layer, ConvSpec):
            filters = layer.filters
            size = f"{layer.size}x{layer.size}/{layer.stride}" + (f" g{layer.groups}" if layer.groups > 1 else "")
            macs = out[0] * (inp[0] // layer.groups) * layer.size * layer.size * out[1] * out[2]
            bflops = 2.0 * macs / 1e9
            params = out[0] * (inp[0] // layer.groups) * layer.size**2 + (2 * out[0] if layer.batch_normalize else out[0])
        elif isinstance(layer, MaxPoolSpec):
            size = f"{layer.size}x{layer.size}/{layer.stride}"
            bflops = layer.size * layer.size * inp[0] * out[1] * out[2] / 1e9
        elif isinstance(layer, RouteSpec):
            size = ",".join(str(i) for i in layer.layers) + (f" g{layer.group_id}/{layer.groups}" if layer.groups > 1 else "")
            inp = shapes[layer.layers[0]]
        elif isinstance(layer, ShortcutSpec):
            size = f"from {layer.source}"
            bflops = out[0] * out[1] * out[2] / 1e9  # darknet-AB counts one add per output (n=1 source)
        elif isinstance(layer, ScaleChannelsSpec):
            size = f"from {layer.source}"
        elif isinstance(layer, UpsampleSpec):
            size = f"x{layer.stride}"
        rows.append(LayerInfo(layer.index, layer.section, filters, size, inp, out, bflops, params))
        prev = out
    return rows


def total_bflops(cfg: Cfg, img_size: int | None = None, conv_only: bool = False) -> float:
    return sum(r.bflops for r in layer_table(cfg, img_size) if not conv_only or r.type == "convolutional")
