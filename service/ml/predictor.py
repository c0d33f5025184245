"""Predictors: what turns rows of features into class probabilities.

`Predictor` is what the API needs of a model. `ForestPredictor` serves a scikit-learn
random forest or extra-trees forest exactly, without scikit-learn's per-call overhead;
`SklearnPredictor` serves any other fitted classifier with ``predict_proba`` through
scikit-learn itself (`service.ml.artifact.make_predictor` picks one).

``RandomForestClassifier.predict_proba`` (``ExtraTreesClassifier``'s is the same code) pays
the joblib ``Parallel`` wrapper on every call, whatever the row count, which dwarfs the work
for the few rows a request carries. Here the trees are packed once into flat arrays and
evaluated for all trees x rows at once with numpy (figures: README, Performance;
``deploy/bench/model_bench.py`` measures both). For batches of thousands of rows sklearn's
compiled loop wins again; the API caps batches far below.

Node decisions are computed for every node in one pass (nodes are grouped by feature, so
that is a few broadcast comparisons), turned into a per-row "next node" table, and then
all (tree, row) cursors follow that table for ``max_depth`` steps; leaves point to
themselves. Alternatives measured and dropped as slower: walking the trees level by level
with a gather of the feature value at every step, building the next-node table with
``np.where``, and ``int32`` indices (faster for batches, slower for the common single row).

The results are bit-for-bit those of sklearn: rows are cast to float32 before being compared
with the float64 thresholds (as sklearn does), and per-tree probabilities are summed in tree
order over the slow axis (numpy does not sum pairwise there) and then divided by the tree
count, exactly like ``ForestClassifier.predict_proba``. Exact ties between classes therefore
break the same way too. (The served model's leaves are pure, so its per-tree sums are exact
anyway; the order matters for forests with mixed leaves, which the tests also cover.)
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service.ml.manifest import ModelManifest

FloatArray = npt.NDArray[np.float64]
_IndexArray = npt.NDArray[np.intp]

_TREE_LEAF = -1
# Bounds the per-chunk next-node table (rows x nodes entries) to a few MB.
_TABLE_ENTRIES = 1 << 18


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


class ForestPredictor:
    """A fitted `RandomForestClassifier` or `ExtraTreesClassifier`, packed once into flat
    arrays (see module doc). Class columns are in the estimator's `classes_` order, which is
    the manifest's `class_names` order."""

    __slots__ = (
        "_depth",
        "_feature_slices",
        "_left",
        "_n_internal",
        "_n_nodes",
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
        if np.any(feature[~leaf] >= self.n_features):
            raise ValueError(f"a tree splits on a feature beyond the {self.n_features} expected")

        node_ids = np.arange(left.size, dtype=np.intp)
        tree_offset = np.repeat(offsets, sizes)
        left = np.where(leaf, node_ids, left + tree_offset)
        right = np.where(leaf, node_ids, right + tree_offset)

        groups = [np.flatnonzero(~leaf & (feature == f)) for f in range(self.n_features)]
        order = np.concatenate([*groups, np.flatnonzero(leaf)])
        new_id = np.empty_like(order)
        new_id[order] = np.arange(order.size, dtype=np.intp)
        bounds = np.cumsum([0, *(group.size for group in groups)])

        self._n_nodes = int(order.size)
        self._n_internal = int(bounds[-1])
        self._feature_slices = tuple(
            (f, slice(int(bounds[f]), int(bounds[f + 1])))
            for f in range(self.n_features)
            if bounds[f + 1] > bounds[f]
        )
        self._thresholds = _frozen(threshold[order[: self._n_internal]])
        self._left = _frozen(new_id[left[order]])
        self._right = _frozen(new_id[right[order]])
        self._values = _frozen(values[order])
        self._roots = _frozen(new_id[offsets])
        self._depth = max(int(tree.max_depth) for tree in trees)

    def predict_proba(self, X: FloatArray) -> FloatArray:
        """Class probabilities for rows of ``X`` (n, n_features); identical to sklearn's."""
        X32 = self._validated(X)
        n_rows = X32.shape[0]
        out = np.empty((n_rows, len(self.class_names)), dtype=np.float64)
        chunk = max(1, _TABLE_ENTRIES // self._n_nodes)
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            out[start:stop] = self._tree_sums(X32[start:stop])
        out /= self._roots.size
        return out

    def predict_proba_reference(self, X: FloatArray) -> FloatArray:
        """scikit-learn's own answer, for tests and benchmarks: ~4 ms per call."""
        return np.asarray(self.estimator.predict_proba(self._validated(X)), dtype=np.float64)

    def _validated(self, X: FloatArray) -> npt.NDArray[np.float32]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an array of shape (n, {self.n_features}), got {X.shape}")
        # Compare in float32, as sklearn does; values beyond float32 range become inf here.
        with np.errstate(over="ignore"):
            X32 = X.astype(np.float32)
        if not np.isfinite(X32).all():
            raise ValueError("input contains NaN, infinity or a value too large for float32")
        return X32

    def _tree_sums(self, X32: npt.NDArray[np.float32]) -> FloatArray:
        """Sum over trees, in tree order, of the leaf probabilities each row reaches."""
        n_rows = X32.shape[0]
        goes_right = np.empty((n_rows, self._n_internal), dtype=np.bool_)
        for f, nodes in self._feature_slices:
            np.greater(X32[:, f, None], self._thresholds[nodes], out=goes_right[:, nodes])

        next_node = np.empty((n_rows, self._n_nodes), dtype=np.intp)
        next_node[...] = self._left
        internal = next_node[:, : self._n_internal]
        np.copyto(internal, self._right[: self._n_internal], where=goes_right)
        row_base: _IndexArray = np.arange(0, n_rows * self._n_nodes, self._n_nodes, dtype=np.intp)
        next_node += row_base[:, None]

        flat = next_node.ravel()
        cursor = self._roots[:, None] + row_base
        for _ in range(self._depth):
            cursor = flat.take(cursor)
        cursor -= row_base
        leaf_values = self._values.take(cursor, axis=0)
        sums: FloatArray = np.add.reduce(leaf_values, axis=0)
        return sums


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


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array
