"""The fast path must give scikit-learn's answers exactly, including at split boundaries,
for random forests and extra-trees forests alike."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_iris, load_wine
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from service.ml.manifest import Feature
from service.ml.predictor import ForestPredictor, _float32_floor, _forest_proba

FloatArray = npt.NDArray[np.float64]
IRIS: FloatArray = np.asarray(load_iris().data, dtype=np.float64)


def _assert_matches_reference(predictor: ForestPredictor, X: FloatArray) -> None:
    fast = predictor.predict_proba(X)
    reference = predictor.predict_proba_reference(X)
    assert fast.shape == (X.shape[0], len(predictor.class_names))
    assert fast.dtype == np.float64
    assert np.max(np.abs(fast - reference)) <= 1e-12
    np.testing.assert_array_equal(fast.argmax(axis=1), reference.argmax(axis=1))
    # Stronger than the contract: summing in sklearn's order makes it bit-for-bit.
    np.testing.assert_array_equal(fast, reference)


def _split_points(predictor: ForestPredictor) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """(feature, threshold) of every split in the forest."""
    trees = [tree.tree_ for tree in predictor.estimator.estimators_]
    features = np.concatenate([t.feature[t.children_left != -1] for t in trees])
    thresholds = np.concatenate([t.threshold[t.children_left != -1] for t in trees])
    return features.astype(np.intp), thresholds.astype(np.float64)


def _threshold_rows(predictor: ForestPredictor) -> FloatArray:
    """Iris rows with one feature moved onto, or just beside, a split threshold."""
    features, thresholds = _split_points(predictor)
    t32 = thresholds.astype(np.float32)
    candidates = [
        thresholds,
        thresholds - 1e-9,
        thresholds + 1e-9,
        thresholds - 1e-7,
        thresholds + 1e-7,
        t32.astype(np.float64),
        np.nextafter(t32, np.float32(np.inf)).astype(np.float64),
        np.nextafter(t32, np.float32(-np.inf)).astype(np.float64),
    ]
    base = IRIS[:: len(IRIS) // 10]
    blocks = []
    for values in candidates:
        rows = np.repeat(base, len(values), axis=0)
        rows[np.arange(len(rows)), np.tile(features, len(base))] = np.tile(values, len(base))
        blocks.append(rows)
    return np.concatenate(blocks)


def test_all_iris_rows(predictor: ForestPredictor) -> None:
    _assert_matches_reference(predictor, IRIS)


def test_single_rows(predictor: ForestPredictor) -> None:
    for row in IRIS[::7]:
        _assert_matches_reference(predictor, row[None, :])


def test_uniform_rows_over_the_accepted_range(predictor: ForestPredictor) -> None:
    rng = np.random.default_rng(20240601)
    _assert_matches_reference(predictor, rng.uniform(0.0, 100.0, size=(10_000, 4)))


def test_uniform_rows_where_the_splits_are(predictor: ForestPredictor) -> None:
    rng = np.random.default_rng(7)
    low, high = IRIS.min(axis=0) - 0.5, IRIS.max(axis=0) + 0.5
    _assert_matches_reference(predictor, rng.uniform(low, high, size=(20_000, 4)))


def test_iris_rows_nudged_by_ulps_and_1e7(predictor: ForestPredictor) -> None:
    steps = np.array([-1e-7, 0.0, 1e-7])
    grid = np.stack(np.meshgrid(steps, steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 4)
    nudged = (IRIS[:, None, :] + grid[None, :, :]).reshape(-1, 4)
    _assert_matches_reference(predictor, nudged)
    _assert_matches_reference(predictor, np.nextafter(IRIS, np.inf))
    _assert_matches_reference(predictor, np.nextafter(IRIS, -np.inf))


def test_rows_on_and_beside_every_threshold(predictor: ForestPredictor) -> None:
    _assert_matches_reference(predictor, _threshold_rows(predictor))


def test_threshold_rows_tell_float32_from_float64(predictor: ForestPredictor) -> None:
    """The boundary rows would catch a fast path that forgot sklearn's float32 cast."""
    _, thresholds = _split_points(predictor)
    values = np.concatenate([thresholds - 1e-9, thresholds + 1e-9])
    cut = np.concatenate([thresholds, thresholds])
    as_float32 = values.astype(np.float32).astype(np.float64) <= cut
    assert np.any(as_float32 != (values <= cut))


def test_a_batch_answers_as_its_rows_one_by_one(predictor: ForestPredictor) -> None:
    rng = np.random.default_rng(3)
    X = IRIS[rng.integers(0, len(IRIS), size=1_000)]
    _assert_matches_reference(predictor, X)
    single = np.concatenate([predictor.predict_proba(row[None, :]) for row in X[:50]])
    np.testing.assert_array_equal(predictor.predict_proba(X)[:50], single)


def test_the_walk_is_compiled_when_the_predictor_is_built(predictor: ForestPredictor) -> None:
    """Under gunicorn that is in the master, before the fork: no request pays numba's
    compilation (about a second), whatever the row count or the array's layout."""
    compiled = list(_forest_proba.signatures)
    assert len(compiled) == 1
    predictor.predict_proba(np.asarray([[5.1, 3.5, 1.4, 0.2]]))
    predictor.predict_proba(IRIS[:64])
    predictor.predict_proba(np.asfortranarray(IRIS[:64]))
    predictor.predict_proba(IRIS[:64].astype(np.float32))
    read_only = IRIS[:2].copy()
    read_only.setflags(write=False)  # as V2's binary tensor data arrives (np.frombuffer)
    predictor.predict_proba(read_only)
    assert list(_forest_proba.signatures) == compiled


def test_probabilities_are_distributions(predictor: ForestPredictor) -> None:
    proba = predictor.predict_proba(IRIS)
    assert np.all(proba >= 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.mean(proba.argmax(axis=1) == load_iris().target) > 0.95


def test_empty_batch(predictor: ForestPredictor) -> None:
    assert predictor.predict_proba(np.empty((0, 4))).shape == (0, 3)


@pytest.mark.parametrize(
    "X",
    [np.zeros(4), np.zeros((2, 3)), np.zeros((2, 5)), np.zeros((1, 2, 4))],
    ids=["1-d", "3-cols", "5-cols", "3-d"],
)
def test_rejects_wrong_shapes(predictor: ForestPredictor, X: FloatArray) -> None:
    with pytest.raises(ValueError, match="expected an array of shape"):
        predictor.predict_proba(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_rejects_non_finite_values(predictor: ForestPredictor, bad: float) -> None:
    X = IRIS[:2].copy()
    X[1, 2] = bad
    with pytest.raises(ValueError, match="NaN, infinity"):
        predictor.predict_proba(X)


def test_concurrent_calls_agree(predictor: ForestPredictor) -> None:
    rng = np.random.default_rng(11)
    batches = [rng.uniform(0.0, 8.0, size=(int(n), 4)) for n in rng.integers(1, 300, size=64)]
    expected = [predictor.predict_proba_reference(X) for X in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(predictor.predict_proba, batches))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "params",
    [{"max_depth": 3}, {"min_samples_leaf": 9}, {"max_samples": 0.5, "n_estimators": 257}],
    ids=["shallow", "wide-leaves", "odd-tree-count"],
)
def test_forests_with_mixed_leaves(predictor: ForestPredictor, params: dict[str, Any]) -> None:
    """Mixed leaves make the summation order visible, which the served Iris model hides."""
    X, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(**{"random_state": 5, "n_jobs": 1, **params}).fit(X, y)
    mixed = ForestPredictor(predictor.manifest, forest)
    rng = np.random.default_rng(5)
    _assert_matches_reference(mixed, np.concatenate([IRIS, rng.uniform(0, 8, size=(5_000, 4))]))


@pytest.mark.parametrize(
    "params",
    [
        {"n_estimators": 100},
        {"n_estimators": 50, "max_depth": 3},
        {"n_estimators": 31, "min_samples_leaf": 7},
        {"n_estimators": 40, "bootstrap": True, "max_samples": 0.5},
    ],
    ids=["default", "shallow", "wide-leaves", "bootstrap"],
)
def test_extra_trees_match_sklearn(predictor: ForestPredictor, params: dict[str, Any]) -> None:
    """ExtraTreesClassifier shares the forest's predict_proba; its random thresholds sit
    anywhere between values, and its leaves are mixed once they are wide."""
    X, y = load_iris(return_X_y=True)
    forest = ExtraTreesClassifier(**{"random_state": 9, "n_jobs": 1, **params}).fit(X, y)
    extra = ForestPredictor(predictor.manifest, forest)
    rng = np.random.default_rng(9)
    rows = np.concatenate([IRIS, rng.uniform(0, 8, size=(5_000, 4)), _threshold_rows(extra)])
    _assert_matches_reference(extra, rows)
    for row in IRIS[::15]:
        _assert_matches_reference(extra, row[None, :])


def test_forest_with_other_labels_keeps_the_classes_order(predictor: ForestPredictor) -> None:
    """Columns follow classes_ (here sorted strings), which the manifest's names follow."""
    X, y = load_iris(return_X_y=True)
    labels = np.array(["virginica?", "a-setosa", "versicolor"])[y]
    forest = ExtraTreesClassifier(n_estimators=20, random_state=1).fit(X, labels)
    assert forest.classes_.tolist() == ["a-setosa", "versicolor", "virginica?"]
    extra = ForestPredictor(predictor.manifest, forest)
    _assert_matches_reference(extra, IRIS)
    assert (
        extra.predict_proba(IRIS).argmax(axis=1) == np.searchsorted(forest.classes_, labels)
    ).mean() > 0.95


def test_wine_extra_trees_match_sklearn(predictor: ForestPredictor) -> None:
    """Thirteen features on scales from 0.1 to 1,680 (another dataset, another manifest)."""
    wine = load_wine()
    forest = ExtraTreesClassifier(n_estimators=60, random_state=3).fit(wine.data, wine.target)
    manifest = predictor.manifest.model_copy(
        update={
            "features": [Feature(name=n, minimum=0, maximum=2000) for n in wine.feature_names],
            "example": None,
        }
    )
    extra = ForestPredictor(manifest, forest)
    rng = np.random.default_rng(4)
    low, high = wine.data.min(axis=0), wine.data.max(axis=0)
    _assert_matches_reference(
        extra, np.concatenate([wine.data, rng.uniform(low, high, (4_000, 13))])
    )


def test_thresholds_are_rounded_down_to_the_largest_float32_at_or_below_them() -> None:
    """The walk compares float32 with these; it splits as scikit-learn's float32-against-
    float64 comparison only if each is the largest float32 that is not above the original."""
    rng = np.random.default_rng(7)
    exact = rng.random(1000).astype(np.float32).astype(np.float64)
    between = np.nextafter(exact, np.inf)  # just above a float32: rounds to nearest upwards
    thresholds = np.concatenate([exact, between, rng.normal(0, 1e3, 1000), [1e39, -1e39, 0.0]])

    floors = _float32_floor(thresholds).astype(np.float64)

    assert np.all(floors <= thresholds)
    with np.errstate(over="ignore"):  # above float32's largest: +inf
        next_up = np.nextafter(floors.astype(np.float32), np.float32(np.inf)).astype(np.float64)
    assert np.all(next_up > thresholds)
    assert np.array_equal(floors[:1000], exact)
