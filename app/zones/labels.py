"""Every label the config names must be a label of the model: zone `labels`, `filters` keys, alert rule labels.

The model's labels come from the ONNX file's metadata (`names`, as Ultralytics writes it) without starting an
inference session, so `vigil run` can refuse a misspelt label before any process starts; the reload validation
and a newly serving model check the same way.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from app.config import ConfigError, ModelConfig, VigilConfig
from app.inference.detector import match_classes


def named_labels(cfg: VigilConfig) -> Iterator[tuple[str, str]]:
    """Every label the config names, as (dotted key, label), in config order."""
    for c, cam in enumerate(cfg.cameras):
        for z, zone in enumerate(cam.zones):
            for label in zone.labels or ():
                yield f"cameras.{c}.zones.{z}.labels", label
        for label in cam.filters:
            yield f"cameras.{c}.filters.{label}", label
    for i, rule in enumerate(cfg.tracking.alerts):
        yield f"tracking.alerts.{i}.label", rule.label


def validate_labels(cfg: VigilConfig, names: Mapping[int, str], source: str | None = None) -> None:
    """Check that every label the config names is one of the model's.

    Args:
        cfg: The config.
        names: The model's class id -> label; empty (unknown) checks nothing.
        source: The config file, to start the message with as the config's other errors do (None: no file).

    Raises:
        ConfigError: The first unknown label, naming its key, e.g.
            `cameras.0.zones.1.labels: 'persn' is not a label of the model (person, bicycle, ...)`; or a label
            that `model.classes` leaves out, so it could never be detected.
    """
    if not names:
        return
    known = set(names.values())
    kept = _kept_labels(cfg.model.classes, names)
    where = f"{source}: " if source else ""
    for key, label in named_labels(cfg):
        if label not in known:
            shown = list(names.values())
            listed = ", ".join(shown[:12]) + (", ..." if len(shown) > 12 else "")
            raise ConfigError(f"{where}{key}: {label!r} is not a label of the model ({listed})")
        if kept is not None and label not in kept:
            raise ConfigError(
                f"{where}{key}: {label!r} is left out by model.classes ({', '.join(sorted(kept))}), so it is "
                "never detected"
            )


def _kept_labels(classes: list[int | str] | None, names: Mapping[int, str]) -> set[str] | None:
    """The labels `model.classes` keeps, or None when it keeps every label.

    Read as the worker reads it (`match_classes`: labels case-insensitive, ids as ints or digit strings). None
    too when none of its entries is a label of the model: the worker refuses that itself, naming the labels.
    """
    if classes is None:
        return None
    ids, _ = match_classes(classes, names)
    return {names[i] for i in ids} or None


def model_labels(model: ModelConfig) -> dict[int, str]:
    """The labels in an ONNX model file's metadata (`names`), read without an inference session.

    Returns:
        Class id -> label; empty when the file is not an ONNX model with `names` metadata (a TensorRT engine,
        a model without metadata, a missing or unreadable file: the serving worker's labels are checked then).
    """
    path = Path(model.path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return {}
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        raw = next((p.value for p in proto.metadata_props if p.key == "names"), None)
        parsed = ast.literal_eval(raw) if raw else None
    except Exception:  # a broken file is the model loader's error to report, not this check's
        return {}
    if isinstance(parsed, dict):
        return {int(k): str(v) for k, v in parsed.items()}
    if isinstance(parsed, list):
        return {i: str(v) for i, v in enumerate(parsed)}
    return {}
