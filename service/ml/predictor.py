"""Predictors: what turns rows of features into class probabilities.

`Predictor` is what the API needs of a model. `ForestPredictor` serves a scikit-learn
random forest or extra-trees forest exactly, without scikit-learn's per-call overhead;
`SklearnPredictor` serves any other fitted classifier with ``predict_proba`` through
scikit-learn itself (`service.ml.artifact.make_predictor` picks one).

``RandomForestClassifier.predict_proba`` (``ExtraTreesClassifier``'s is the same code) pays
the joblib ``Parallel`` wrapper on every call, whatever the row count, which dwarfs the work
for the few rows a request carries. Here the trees are packed once into flat arrays and
walked by one small function compiled with numba (`_forest_proba`): each row down each
tree, as scikit-learn's own compiled loop does, in one call for the whole input. Figures
(README, Performance; ``deploy/bench/model_bench.py`` measures both): ~2.7-3.0 µs per call
for one Iris row and ~55-61 µs for 64, since the arrays are 32-bit (~3.4 and ~74-82 µs
with 64-bit ones), where the vectorised numpy walk before them spent ~29 µs and ~310 µs in
two dozen numpy calls. The function is compiled when the predictor is built (under
gunicorn: once, in the master, before the workers fork), not on the first request; it
releases the GIL, so a large batch in the thread pool leaves the event loop free.

The results are bit-for-bit those of sklearn: each value is cast to float32 (as sklearn
does) and compared with the threshold rounded down to a float32, which splits every row as
sklearn's comparison with the float64 threshold does (`_float32_floor`); per-tree
probabilities are summed in tree order and then divided by the tree count, exactly like
``ForestClassifier.predict_proba``. Exact ties between classes therefore break the same
way too. (The served model's leaves are pure, so its per-tree sums are exact anyway; the
order matters for forests with mixed leaves, which the tests also cover.)
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from numba import njit

from service.ml.manifest import ModelManifest

FloatArray = npt.NDArray[np.float64]
_NodeArray = npt.NDArray[np.int32]
_Float32Array = npt.NDArray[np.float32]

_TREE_LEAF = -1
_NOT_FINITE = "input contains NaN, infinity or a value too large for float32"


class Predictor(Protocol):
    """A loaded model, immutable after construction, so one instance serves all threads."""

    @property
    def manifest(self) -> ModelManifest: ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def runs_inline(self) -> bool:
        """Whether a small input may be predicted on the event loop (it costs tens of µs);
        otherwise every call goes to the thread pool."""
        ...

    def predict_proba(self, X: FloatArray) -> FloatArray:
        """Class probabilities, one row per row of `X` (n, features), in manifest order."""
        ...


@njit(nogil=True, cache=False)
def _forest_proba(
    X: FloatArray,
    roots: _NodeArray,
    feature: _NodeArray,
    threshold: _Float32Array,
    left: _NodeArray,
    right: _NodeArray,
    values: FloatArray,
    out: FloatArray,
) -> bool:
    """Fill `out` with the forest's class probabilities for the rows of `X`; False (with
    `out` unfinished) when a value is NaN or infinite once cast to float32.

    Nodes are numbered across trees; a leaf has `left == -1`. A row goes left where its
    float32 value is <= the node's threshold, which `_pack` rounded down to a float32: the
    same split as scikit-learn's comparison with the float64 threshold."""
    n_rows, n_features = X.shape
    n_trees = roots.size
    n_classes = values.shape[1]
    row = np.empty(n_features, dtype=np.float32)
    # A row's sums are kept in an array of the function's own and written to `out` once:
    # the same additions in the same order, but 64 rows whose paths vary from tree to tree
    # (`model_bench.py --uniform`) take ~90 µs instead of ~195-245 when summed in `out`
    # itself. The dataset's own rows take ~52-58 µs either way.
    totals = np.empty(n_classes, dtype=np.float64)
    for i in range(n_rows):
        for f in range(n_features):
            row[f] = np.float32(X[i, f])
            if not np.isfinite(row[f]):
                return False
        totals[:] = 0.0
        for t in range(n_trees):
            node = roots[t]
            while left[node] != _TREE_LEAF:
                node = left[node] if row[feature[node]] <= threshold[node] else right[node]
            for c in range(n_classes):
                totals[c] += values[node, c]
        for c in range(n_classes):
            out[i, c] = totals[c] / n_trees
    return True


class ForestPredictor:
    """A fitted `RandomForestClassifier` or `ExtraTreesClassifier`, packed once into flat
    arrays (see module doc). Class columns are in the estimator's `classes_` order, which is
    the manifest's `class_names` order."""

    __slots__ = (
        "_feature",
        "_left",
        "_right",
        "_roots",
        "_thresholds",
        "_values",
        "class_names",
        "estimator",
        "manifest",
        "n_features",
    )

    def __init__(self, manifest: ModelManifest, estimator: Any) -> None:
        self.manifest = manifest
        self.estimator = estimator
        self.class_names: tuple[str, ...] = tuple(manifest.class_names)
        self.n_features: int = len(manifest.feature_names)
        self._pack([tree.tree_ for tree in estimator.estimators_])
        self.predict_proba(np.zeros((1, self.n_features)))  # compiles `_forest_proba` now

    @property
    def runs_inline(self) -> bool:
        return True

    def _pack(self, trees: list[Any]) -> None:
        n_classes = len(self.class_names)
        sizes = np.array([tree.node_count for tree in trees], dtype=np.intp)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
        left = np.concatenate([tree.children_left for tree in trees]).astype(np.intp)
        right = np.concatenate([tree.children_right for tree in trees]).astype(np.intp)
        feature = np.concatenate([tree.feature for tree in trees]).astype(np.intp)
        threshold = np.concatenate([tree.threshold for tree in trees]).astype(np.float64)
        values = np.concatenate([tree.value for tree in trees]).astype(np.float64)
        if values.ndim != 3 or values.shape[1:] != (1, n_classes):
            raise ValueError(
                f"tree values have shape {values.shape[1:]}, expected (1, {n_classes})"
            )
        values = values[:, 0, :]

        leaf = left == _TREE_LEAF
        # sklearn >= 1.4 stores per-node class fractions and predicts them as they are;
        # re-normalising could move a mixed leaf by an ulp, so only check the semantics.
        if not np.allclose(values[leaf].sum(axis=1), 1.0, rtol=0.0, atol=1e-9):
            raise ValueError("tree leaf values are not class fractions (scikit-learn < 1.4?)")
        if np.any(feature[~leaf] >= self.n_features) or np.any(feature[~leaf] < 0):
            raise ValueError(f"a tree splits on a feature beyond the {self.n_features} expected")

        if sizes.sum() >= np.iinfo(np.int32).max:
            raise ValueError("the forest has more nodes than 32-bit indices address")
        tree_offset = np.repeat(offsets, sizes)
        # Compact (int32 indices, float32 thresholds: 16 bytes a node where int64 and float64
        # took 32), so a forest like the Iris one (1,328 nodes) stays in the L1 cache while it
        # is walked: 64 shuffled Iris rows in ~68 µs instead of ~136 (best of 7, one core).
        self._left = _frozen(np.where(leaf, _TREE_LEAF, left + tree_offset).astype(np.int32))
        self._right = _frozen(np.where(leaf, _TREE_LEAF, right + tree_offset).astype(np.int32))
        self._feature = _frozen(np.where(leaf, 0, feature).astype(np.int32))
        self._thresholds = _frozen(_float32_floor(threshold))
        self._values = _frozen(values)
        self._roots = _frozen(offsets.astype(np.int32))

    def predict_proba(self, X: FloatArray) -> FloatArray:
        """Class probabilities for rows of ``X`` (n, n_features); identical to sklearn's."""
        X = self._shaped(X)
        out = np.empty((X.shape[0], len(self.class_names)), dtype=np.float64)
        finite = _forest_proba(
            X,
            self._roots,
            self._feature,
            self._thresholds,
            self._left,
            self._right,
            self._values,
            out,
        )
        if not finite:
            raise ValueError(_NOT_FINITE)
        return out

    def predict_proba_reference(self, X: FloatArray) -> FloatArray:
        """scikit-learn's own answer, for tests and benchmarks: ~4 ms per call."""
        with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
            X32 = self._shaped(X).astype(np.float32)
        if not np.isfinite(X32).all():
            raise ValueError(_NOT_FINITE)
        return np.asarray(self.estimator.predict_proba(X32), dtype=np.float64)

    def _shaped(self, X: FloatArray) -> FloatArray:
        """`X` as the one array type `_forest_proba` was compiled for: float64, C order,
        writable (a read-only array, e.g. V2's binary tensor data, would make numba compile
        another version of it during a request)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an array of shape (n, {self.n_features}), got {X.shape}")
        return X if X.flags.writeable else X.copy()


class SklearnPredictor:
    """Any other fitted scikit-learn classifier with ``predict_proba`` (a logistic
    regression, a pipeline, gradient boosting, ...), served by scikit-learn itself.

    Its per-call cost is scikit-learn's (input validation, sometimes joblib): from ~0.1 to
    several ms, so the API runs every call in the thread pool (`runs_inline` is False).
    Values are checked here (shape, finite) before scikit-learn sees them.
    """

    __slots__ = ("class_names", "estimator", "manifest", "n_features")

    def __init__(self, manifest: ModelManifest, estimator: Any) -> None:
        self.manifest = manifest
        self.estimator = estimator
        self.class_names: tuple[str, ...] = tuple(manifest.class_names)
        self.n_features: int = manifest.n_features
        if getattr(estimator, "feature_names_in_", None) is not None:
            # Fitted on a DataFrame: it is given arrays in the manifest's column order
            # (packaging checked the names), so scikit-learn's warning about them is noise.
            warnings.filterwarnings(
                "ignore", message="X does not have valid feature names", category=UserWarning
            )

    @property
    def runs_inline(self) -> bool:
        return False

    def predict_proba(self, X: FloatArray) -> FloatArray:
        """scikit-learn's `predict_proba` for rows of ``X`` (n, n_features), as float64."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an array of shape (n, {self.n_features}), got {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("input contains NaN or infinity")
        if X.shape[0] == 0:
            return np.empty((0, len(self.class_names)), dtype=np.float64)
        proba = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        if proba.shape != (X.shape[0], len(self.class_names)):
            raise ValueError(f"predict_proba answered shape {proba.shape} for {X.shape[0]} rows")
        return proba

    def predict_proba_reference(self, X: FloatArray) -> FloatArray:
        """The same as `predict_proba`: scikit-learn is the reference."""
        return self.predict_proba(X)


def _float32_floor(threshold: FloatArray) -> _Float32Array:
    """Each threshold rounded down to the largest float32 at or below it. For a float32 `x`,
    `x <= t64` holds exactly when `x <= floor32(t64)`: the float32s at or below `t64` are
    those at or below the largest of them. So the walk compares float32 with float32 and
    still splits every row as scikit-learn's float32-against-float64 comparison does."""
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, still a floor
        rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array
