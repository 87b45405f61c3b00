"""Import a user's model and feature table into the registry (``hybridserve import``).

The model is an ONNX file, or a scikit-learn estimator or Pipeline saved with joblib or pickle
(converted with skl2onnx). The table is CSV or Parquet with one row per key: a key column of
arbitrary string ids and numeric feature columns. What is written is a registry version like the
demo's (``model.onnx``, ``card.json``, ``features.npy``) plus ``keys.npy``, the keys sorted, with
the feature rows in the same order; its version is a content hash of model, keys and features.

Everything that would make serving wrong is refused before anything is written, with one line
naming the file, the row or column and the rule (:class:`ImportError_`): duplicate keys, keys that
break the key rule, missing or extra feature columns, non-numeric or empty values, a model whose
input width does not match the table, a model that does not give one number per row.

Feature columns default to all columns but the key, in the order the model expects:
``feature_names_in_`` when the scikit-learn model has it (then the table's other columns must be
exactly those names: a name the model wants but the table lacks, or a column the model does not
know, is refused rather than guessed), else the table's order.

Example::

    artifact = import_model("churn", Path("churn.joblib"), Path("users.parquet"), "user_id", Path("registry"))
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sklearn.base import is_classifier

from models import export
from models.publish import write_version
from models.reference import REFERENCE_KEY, reference_distribution
from models.registry import CARD_FILE, ModelArtifact, content_version, set_latest
from models.runtime import input_dtype, run, session
from models.keyspace import FENCES_FILE, KEY_RULE, KEYS_FILE, MAX_KEY_LENGTH, KeyRuleError, TableKeySpace, check_key

PARITY_SAMPLE_ROWS = 2000
# Table rows whose predictions make the card's reference prediction distribution (an import has
# no holdout): enough for stable deciles, a fraction of a second of inference.
REFERENCE_PREDICTION_ROWS = 20_000
# Columns with at most this many distinct values list them in the schema (categorical codes).
LOW_CARDINALITY = 20
NAME_PATTERN = "letters, digits, '_', '.' and '-', 1-64 characters"
_MODEL_SUFFIXES = {".onnx": "onnx", ".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn"}


class ImportError_(ValueError):
    """A model or table that cannot be served as given; the message is the one line to show."""


@dataclass(frozen=True)
class Table:
    """A validated feature table: keys (str) and float32 features, in file order."""

    keys: list[str]
    features: np.ndarray
    names: list[str]
    schema: dict[str, dict[str, Any]]


# --------------------------------------------------------------------------- the table


def read_table(path: Path, key_column: str, features: list[str] | None) -> pa.Table:
    """The raw table (CSV or Parquet), key column as strings; :class:`ImportError_` if unreadable."""
    if not path.is_file():
        raise ImportError_(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
        elif suffix in (".csv", ".tsv"):
            options = pa_csv.ConvertOptions(column_types={key_column: pa.string()}, strings_can_be_null=False)
            parse = pa_csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pa_csv.read_csv(path, parse_options=parse, convert_options=options)
        else:
            raise ImportError_(f"{path}: a table must be .csv, .tsv or .parquet, got {suffix or 'no extension'}")
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportError_(f"{path}: cannot read the table: {str(exc).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise ImportError_(f"{path}: the table has no rows")
    if key_column not in table.column_names:
        raise ImportError_(f"{path}: no key column {key_column!r} (columns: {', '.join(table.column_names)})")
    return table


def _line(path: Path, row: int) -> str:
    """Where a row is, as a user finds it: a CSV line number (header is line 1), else a row index."""
    return f"line {row + 2}" if path.suffix.lower() in (".csv", ".tsv") else f"row {row}"


def _keys(path: Path, table: pa.Table, key_column: str) -> list[str]:
    column = table.column(key_column)
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise ImportError_(f"{path}: {_line(path, row)}: column {key_column!r} is empty (every row needs a key)")
    keys = [str(k) for k in column.cast(pa.string()).to_pylist()]
    for row, key in enumerate(keys):
        try:
            check_key(key)
        except KeyRuleError:
            shown = key if len(key) <= 40 else key[:40] + "..."
            raise ImportError_(f"{path}: {_line(path, row)}: key {shown!r} breaks the key rule ({KEY_RULE})") from None
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    for a, b in zip(order[:-1].tolist(), order[1:].tolist()):
        if keys[a] == keys[b]:
            raise ImportError_(f"{path}: {_line(path, b)}: duplicate key {keys[b]!r} (first at {_line(path, a)}); "
                               "the table needs one row per key")
    return keys


def _feature_names(path: Path, table: pa.Table, key_column: str, given: list[str] | None, model_names: list[str] | None) -> list[str]:
    others = [c for c in table.column_names if c != key_column]
    if given is not None:
        missing = [c for c in given if c not in others]
        if missing:
            raise ImportError_(f"{path}: no feature column {missing[0]!r} (columns: {', '.join(table.column_names)})")
        names = list(given)
    else:
        names = others
    if model_names is None:
        return names
    missing = [c for c in model_names if c not in names]
    if missing:
        raise ImportError_(f"{path}: the model expects feature {missing[0]!r}, which the table lacks "
                           f"(the model's features: {', '.join(model_names)})")
    extra = [c for c in names if c not in model_names]
    if extra:
        raise ImportError_(f"{path}: column {extra[0]!r} is not a feature of the model (it expects "
                           f"{', '.join(model_names)}); drop it or name the features with --features")
    return list(model_names)  # the model's order, whatever the table's


def _numeric_column(path: Path, table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise ImportError_(f"{path}: {_line(path, row)}: column {name!r} is empty (every feature needs a value)")
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int8())
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        values = column.to_pylist()
        for row, value in enumerate(values):
            try:
                float(value)
            except (TypeError, ValueError):
                raise ImportError_(f"{path}: {_line(path, row)}: column {name!r} holds {str(value)[:40]!r}, "
                                   "not a number (features must be numeric)") from None
        column = column.cast(pa.float64())
    values = column.to_numpy().astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise ImportError_(f"{path}: {_line(path, row)}: column {name!r} holds {values[row]}, not a finite number")
    return values


def _schema(name: str, values: np.ndarray, integral: bool) -> dict[str, Any]:
    """One feature's entry in the card, in the spirit of TensorFlow Data Validation."""
    distinct = np.unique(values)
    entry: dict[str, Any] = {
        "type": "int" if integral else "float",
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "nulls": 0,  # refused at import: every served row is complete
        "distinct": int(len(distinct)),
    }
    if len(distinct) <= LOW_CARDINALITY:
        entry["values"] = [int(v) if integral else float(v) for v in distinct.tolist()]
    return entry


def load_table(path: Path, key_column: str, features: list[str] | None, model_names: list[str] | None) -> Table:
    """Read and validate a feature table (see the module docstring for what is refused)."""
    table = read_table(path, key_column, features)
    keys = _keys(path, table, key_column)
    names = _feature_names(path, table, key_column, features, model_names)
    if not names:
        raise ImportError_(f"{path}: no feature columns besides the key column {key_column!r}")
    columns, schema = [], {}
    for name in names:
        values = _numeric_column(path, table, name)
        integral = pa.types.is_integer(table.column(name).type) or pa.types.is_boolean(table.column(name).type)
        columns.append(values)
        schema[name] = _schema(name, values, integral)
    # Served features are float32: the model sees these exact values in every mode.
    return Table(keys, np.column_stack(columns).astype(np.float32), names, schema)


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ImportedModel:
    """An ONNX model ready to serve, with the scikit-learn model it came from (if any)."""

    onnx_bytes: bytes
    sklearn: Any | None
    estimator: str
    output_name: str
    output_column: int | None
    meaning: str


def _load_sklearn(path: Path) -> Any:
    try:
        return joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, ModuleNotFoundError, AttributeError) as exc:
        raise ImportError_(f"{path}: not a loadable joblib/pickle file: {type(exc).__name__}: {exc}") from None


def _estimator_name(model: Any) -> str:
    steps = getattr(model, "steps", None)
    if steps:
        return "Pipeline(" + ", ".join(type(step).__name__ for _, step in steps) + ")"
    return type(model).__name__


def _output_of(path: Path, sess: ort.InferenceSession, classifier: bool | None) -> tuple[str, int | None, str]:
    """Which output (and column) is the one number per row hybridserve serves."""
    outputs = {o.name: o for o in sess.get_outputs()}
    if "probabilities" in outputs and classifier is not False:
        return "probabilities", 1, "probability of the positive class (column 1 of the classifier's probabilities)"
    first = sess.get_outputs()[0]
    if first.type not in ("tensor(float)", "tensor(double)"):
        raise ImportError_(f"{path}: the model's first output {first.name!r} is {first.type}, not a float tensor; "
                           "hybridserve serves one number per key (a regressor or a binary classifier)")
    return first.name, None, "the model's output"


def load_model(path: Path, sample: np.ndarray) -> ImportedModel:
    """The model at ``path`` as ONNX (converting scikit-learn models on ``sample``)."""
    kind = _MODEL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ImportError_(f"{path}: a model must be .onnx, or .joblib / .pkl / .pickle (scikit-learn), got {path.suffix or 'no extension'}")
    if not path.is_file():
        raise ImportError_(f"{path}: no such file")
    if kind == "onnx":
        onnx_bytes = path.read_bytes()
        try:
            sess = session(onnx_bytes)
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ImportError_(f"{path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from None
        name, column, meaning = _output_of(path, sess, None)
        return ImportedModel(onnx_bytes, None, "ONNX", name, column, meaning)
    model = _load_sklearn(path)
    if not hasattr(model, "predict"):
        raise ImportError_(f"{path}: holds a {type(model).__name__}, not a fitted scikit-learn estimator or Pipeline")
    classifier = is_classifier(model)
    if classifier and len(getattr(model, "classes_", [])) != 2:
        raise ImportError_(f"{path}: a classifier with {len(getattr(model, 'classes_', []))} classes; hybridserve serves one "
                           "number per key (a regressor, or a binary classifier's probability)")
    export.snap_thresholds_to_float32(model)  # exact float32 conversion; no float32 input changes branch
    try:
        onnx_bytes = export.to_onnx_bytes(model, sample)
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        raise ImportError_(f"{path}: skl2onnx cannot convert {_estimator_name(model)}: {str(exc).splitlines()[0]}") from None
    name, column, meaning = _output_of(path, session(onnx_bytes), classifier)
    return ImportedModel(onnx_bytes, model, _estimator_name(model), name, column, meaning)


def _input_width(path: Path, sess: ort.InferenceSession, width: int) -> None:
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ImportError_(f"{path}: the model has {len(inputs)} inputs; hybridserve feeds one 2-D float tensor")
    try:
        input_dtype(sess)
    except ValueError as exc:
        raise ImportError_(f"{path}: {exc}") from None
    shape = inputs[0].shape
    declared = shape[1] if len(shape) == 2 else None
    if isinstance(declared, int) and declared != width:
        raise ImportError_(f"{path}: the model takes {declared} features per row; the table has {width} feature columns")


def _reference(model: Any, X: np.ndarray) -> np.ndarray:
    """scikit-learn's prediction on the float32 rows the server will feed (as float64)."""
    X64 = X.astype(np.float64)
    with warnings.catch_warnings():
        # Fit on a data frame, fed an array: the columns are already in feature_names_in_'s order.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        if is_classifier(model):
            return np.asarray(model.predict_proba(X64))[:, 1]
        return np.asarray(model.predict(X64), dtype=np.float64).reshape(-1)


def check_parity(path: Path, imported: ImportedModel, sess: ort.InferenceSession, X: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime against scikit-learn on a sample of the table; refused past the tolerance.

    Both see the same float32 rows, so only float32 arithmetic inside the graph differs: summed
    rounding stays below ~1e-5 of the output scale (see :mod:`models.export`), and the tolerance is
    :data:`models.export.PARITY_RELATIVE_TOLERANCE` of the output range (at least 1), ten times that.
    """
    got = run(sess, X, output_name=imported.output_name, column=imported.output_column).astype(np.float64)
    if imported.sklearn is None:
        return {"rows": 0, "max_abs_diff": None, "tolerance": None,
                "note": "an ONNX file: no scikit-learn model to compare with", "finite": bool(np.isfinite(got).all())}
    expected = _reference(imported.sklearn, X)
    diff = float(np.max(np.abs(expected - got)))
    scale = max(1.0, float(np.max(expected) - np.min(expected)))
    tolerance = export.PARITY_RELATIVE_TOLERANCE * scale
    if not diff <= tolerance:
        raise ImportError_(f"{path}: ONNX Runtime differs from scikit-learn by {diff:.6g} on {len(X)} table rows "
                           f"(tolerance {tolerance:.6g} = {export.PARITY_RELATIVE_TOLERANCE} x output range)")
    return {"rows": int(len(X)), "max_abs_diff": diff, "tolerance": tolerance, "ambiguous_rows": 0}


# --------------------------------------------------------------------------- the import


def _sample(n: int, rows: int, seed: int = 0) -> np.ndarray:
    if n <= rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))


def import_model(
    name: str,
    model_path: Path,
    table_path: Path,
    key_column: str,
    registry: Path,
    features: list[str] | None = None,
) -> ModelArtifact:
    """Validate, convert, check and publish a user's model with its table; point ``latest`` at it."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ImportError_(f"model name {name!r}: use {NAME_PATTERN}")
    model_names = None
    if model_path.suffix.lower() in (".joblib", ".pkl", ".pickle") and model_path.is_file():
        names_in = getattr(_load_sklearn(model_path), "feature_names_in_", None)
        model_names = [str(n) for n in names_in] if names_in is not None else None
    table = load_table(table_path, key_column, features, model_names)
    sample_rows = _sample(len(table.keys), PARITY_SAMPLE_ROWS)
    imported = load_model(model_path, table.features[sample_rows])
    sess = session(imported.onnx_bytes)
    _input_width(model_path, sess, table.features.shape[1])
    parity = check_parity(model_path, imported, sess, table.features[sample_rows])
    order = np.argsort(np.array([k.encode() for k in table.keys], dtype=object), kind="stable")
    keys = TableKeySpace.encode(table.keys)  # sorted bytes, the same order as `order`
    features_sorted = np.ascontiguousarray(table.features[order])
    version = content_version(imported.onnx_bytes, features_sorted, keys)
    target = registry / name / version
    if not (target / CARD_FILE).exists():
        card = _card(name, imported, table, key_column, keys, parity, export.measure(sess, table.features[sample_rows]),
                     model_path, table_path)
        card[REFERENCE_KEY] = _reference_distribution(imported, sess, table)
        write_version(target, imported.onnx_bytes, features_sorted, card,
                      {KEYS_FILE: keys, FENCES_FILE: TableKeySpace.fences_of(keys)})
    set_latest(registry, name, version)
    return ModelArtifact(name, version, target)


def _reference_distribution(imported: ImportedModel, sess: ort.InferenceSession, table: Table) -> dict[str, Any]:
    """The card's reference for drift monitoring: the feature table's distribution (every row),
    and the model's predictions over a sample of it (an import has no holdout)."""
    rows = table.features[_sample(len(table.keys), REFERENCE_PREDICTION_ROWS, seed=1)]
    predictions = run(sess, rows, output_name=imported.output_name, column=imported.output_column)
    return reference_distribution(table.features, table.names, predictions,
                                  features_from=f"feature table ({len(table.keys)} rows)",
                                  predictions_from=f"model predictions over {len(rows)} feature-table rows (no holdout in an import)")


def _card(
    name: str,
    imported: ImportedModel,
    table: Table,
    key_column: str,
    keys: np.ndarray,
    parity: dict[str, Any],
    timing: export.Timing,
    model_path: Path,
    table_path: Path,
) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"model": model_path.name, "table": table_path.name},
        "estimator": imported.estimator,
        "features": table.names,
        "feature_schema": table.schema,
        "output": {"name": imported.output_name, "column": imported.output_column, "meaning": imported.meaning},
        "key_space": TableKeySpace(keys, key_column).describe(),
        "key_format": f"string ids from column {key_column!r} ({KEY_RULE})",
        "key_count": int(len(keys)),
        "max_key_length": MAX_KEY_LENGTH,
        "training_data": {"rows": int(len(table.keys)), "features": {n: {k: v for k, v in s.items() if k in ("mean", "std", "min", "max")}
                                                                    for n, s in table.schema.items()}},
        "parity": parity,
        "inference_time": asdict(timing),
        "onnx_sha256": hashlib.sha256(imported.onnx_bytes).hexdigest(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
