"""models/importer.py (``hybridserve import``): a user's model and table in, every refusal one clear
line, and the imported model served with the same float in every mode."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hybridserve.cli import main
from models import export
from models.importer import ImportError_, import_model
from serving.precompute import precompute
from tests.helpers import running

ROWS = 600
COLUMNS = ("age", "spend", "region")


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.integers(18, 80, ROWS), rng.normal(50, 10, ROWS), rng.integers(0, 4, ROWS)]).astype(np.float64)
    y = X[:, 1] * 2 + X[:, 2] * 10 + rng.normal(0, 1, ROWS)
    keys = [f"cust-{i:04d}@eu" for i in rng.permutation(ROWS)]  # string ids, not in sorted order
    return keys, X, y


def _csv(path: Path, keys: list[str], X: np.ndarray, header: tuple[str, ...] = ("customer_id", *COLUMNS)) -> Path:
    lines = [",".join(header)] + [f"{k},{int(r[0])},{float(r[1])!r},{int(r[2])}" for k, r in zip(keys, X)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, data) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    keys, X, y = data
    root = tmp_path_factory.mktemp("import")
    pipeline = make_pipeline(StandardScaler(), Ridge()).fit(X[:, [1, 0, 2]], y)
    # As if fit on a data frame with columns in another order than the table's.
    pipeline.steps[0][1].feature_names_in_ = np.array(["spend", "age", "region"], dtype=object)
    joblib.dump(pipeline, root / "pipeline.joblib")
    classifier = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, (y > np.median(y)).astype(int))
    joblib.dump(classifier, root / "classifier.pkl")
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(X, y)
    (root / "forest.onnx").write_bytes(export.to_onnx_bytes(forest, X.astype(np.float32)))
    joblib.dump(forest, root / "forest.joblib")
    pq.write_table(pa.table({"customer_id": keys, "age": X[:, 0].astype(np.int64), "spend": X[:, 1],
                             "region": X[:, 2].astype(np.int64)}), root / "table.parquet")
    return {"pipeline": root / "pipeline.joblib", "classifier": root / "classifier.pkl", "onnx": root / "forest.onnx",
            "forest": root / "forest.joblib", "csv": _csv(root / "table.csv", keys, X), "parquet": root / "table.parquet",
            "root": root}


@pytest.mark.parametrize(("model", "table"), [("pipeline", "csv"), ("classifier", "parquet"), ("onnx", "csv")])
def test_import_writes_a_servable_version(files: dict[str, Path], tmp_path: Path, model: str, table: str) -> None:
    artifact = import_model("m", files[model], files[table], "customer_id", tmp_path)
    card = artifact.card()
    assert card["key_space"]["kind"] == "table" and card["key_count"] == ROWS
    assert set(card["feature_schema"]) == set(COLUMNS) and card["feature_schema"]["region"]["values"] == [0, 1, 2, 3]
    assert card["feature_schema"]["age"]["type"] == "int" and card["feature_schema"]["spend"]["type"] == "float"
    if model == "pipeline":
        assert card["features"] == ["spend", "age", "region"]  # the model's order, not the table's
    if model == "onnx":
        assert card["parity"]["max_abs_diff"] is None and "ONNX" in card["parity"]["note"]
    else:
        assert card["parity"]["max_abs_diff"] <= card["parity"]["tolerance"]
    again = import_model("m", files[model], files[table], "customer_id", tmp_path)
    assert again.version == artifact.version  # a content hash: the same inputs, the same version


def test_tree_thresholds_are_snapped_so_float32_inputs_convert_exactly(data) -> None:  # type: ignore[no-untyped-def]
    keys, X, y = data
    model = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(X, (y > np.median(y)).astype(int))
    X32 = X.astype(np.float32)
    before = model.predict_proba(X32.astype(np.float64))[:, 1]
    assert export.snap_thresholds_to_float32(model) > 0
    np.testing.assert_array_equal(model.predict_proba(X32.astype(np.float64))[:, 1], before)  # no float32 row moves


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


REFUSALS = [
    ("duplicate", "customer_id,age,spend,region\na,1,2,3\nb,1,2,3\na,1,2,3\n", None, r"line 4: duplicate key 'a' \(first at line 2\)"),
    ("missing column", "customer_id,age,spend\na,1,2\n", None, r"expects feature 'region', which the table lacks"),
    ("extra column", "customer_id,age,spend,region,debt\na,1,2,3,4\n", None, r"column 'debt' is not a feature of the model"),
    ("not numeric", "customer_id,age,spend,region\na,1,2,3\nb,1,lots,3\n", None, r"line 3: column 'spend' holds 'lots', not a number"),
    ("empty value", "customer_id,age,spend,region\na,1,,3\n", None, r"line 2: column 'spend' is empty"),
    ("bad key", "customer_id,age,spend,region\nok,1,2,3\nhas space,1,2,3\n", None, r"line 3: key 'has space' breaks the key rule"),
    ("glob key", "customer_id,age,spend,region\nuser*,1,2,3\n", None, r"line 2: key 'user\*' breaks the key rule"),
    ("empty key", "customer_id,age,spend,region\n,1,2,3\n", None, r"line 2: key '' breaks the key rule"),
    ("no key column", "id,age,spend,region\na,1,2,3\n", None, r"no key column 'customer_id'"),
    ("width", "customer_id,age,spend\na,1,2\n", ["age", "spend"], r"takes 3 features per row; the table has 2"),
]


@pytest.mark.parametrize(("case", "text", "features", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_tables_are_refused_with_one_line(files: dict[str, Path], tmp_path: Path, case: str, text: str,
                                              features: list[str] | None, message: str) -> None:
    table = _write(tmp_path / "bad.csv", text)
    model = files["onnx"] if case == "width" else files["pipeline"]
    with pytest.raises(ImportError_, match=message):
        import_model("m", model, table, "customer_id", tmp_path / "registry", features=features)
    assert not (tmp_path / "registry").exists()  # nothing written


def test_bad_models_are_refused(files: dict[str, Path], tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    keys, X, y = data
    three = HistGradientBoostingClassifier(max_iter=5).fit(X, np.digitize(y, np.quantile(y, [0.33, 0.66])))
    joblib.dump(three, tmp_path / "three.joblib")
    _write(tmp_path / "junk.onnx", "not a model")
    _write(tmp_path / "junk.joblib", "not a pickle")
    for path, message in ((tmp_path / "three.joblib", "3 classes"), (tmp_path / "junk.onnx", "ONNX Runtime cannot load"),
                          (tmp_path / "junk.joblib", "not a loadable joblib"), (tmp_path / "m.h5", "must be .onnx")):
        with pytest.raises(ImportError_, match=message):
            import_model("m", path, files["csv"], "customer_id", tmp_path / "registry")


def test_cli_import_prints_the_version_and_refuses_in_one_line(files: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["import", "--name", "churn", "--model", str(files["classifier"]), "--table", str(files["csv"]),
            "--key-column", "customer_id", "--registry", str(tmp_path)]
    assert main(argv) == 0
    assert "churn version" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.csv", "customer_id,age,spend,region\na,1,x,3\n")
    assert main([*argv[:5], "--table", str(bad), *argv[7:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2: column 'spend' holds 'x'" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("model", ["pipeline", "classifier"])
def test_three_modes_serve_the_same_float_as_scikit_learn(files: dict[str, Path], make_settings, data, model: str) -> None:  # type: ignore[no-untyped-def]
    keys, X, y = data
    registry = make_settings().registry.parent / f"imported-{model}"
    import_model("own", files[model], files["csv"], "customer_id", registry)
    sklearn_model = joblib.load(files[model])
    columns = [1, 0, 2] if model == "pipeline" else [0, 1, 2]
    rows32 = X.astype(np.float32)[:, columns].astype(np.float64)
    expected = sklearn_model.predict_proba(rows32)[:, 1] if model == "classifier" else sklearn_model.predict(rows32)
    answers: dict[str, list[float]] = {}
    for mode in ("static", "dynamic", "hybrid"):
        settings = make_settings(mode=mode, registry=registry, model_name="own")
        if mode == "static":
            precompute(settings, progress=False)
        with running(settings) as (_, client):
            body = client.post("/v1/predict", json={"keys": keys[:200]}).json()
            answers[mode] = [p["prediction"] for p in body["predictions"]]
            assert client.get(f"/v1/predict/{keys[0]}").json()["prediction"] == answers[mode][0]
            assert client.get("/v1/predict/cust-9999@eu").status_code == 404
            assert client.get("/v1/predict/cust*").status_code == 422
    assert answers["static"] == answers["dynamic"] == answers["hybrid"]
    np.testing.assert_allclose(answers["dynamic"], expected[:200], atol=1e-4 * max(1.0, np.ptp(expected)))
