"""Per-call cost of scikit-learn's predict_proba versus the service's exact fast path.

Run: .venv/bin/python deploy/bench/model_bench.py [--rows 1 64 ...] [--uniform]

Trains a fresh model in a temporary directory (seed 42, as `make model` does), checks the
two paths agree bit for bit on the benchmark rows, then times each with timeit (best of
several repeats, so the number is the cost, not the machine's noise). The rows are the
dataset's, in order; with --uniform they are drawn uniformly over each feature's range in
the dataset (seed 0), whose paths through the trees vary more from tree to tree.
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_iris

from service.ml.artifact import load_model
from service.ml.predictor import ForestPredictor
from service.ml.train import train

REPEATS = 7


def best_per_call(fn: Callable[[], object], budget_s: float = 0.2) -> float:
    """Seconds per call: calibrate a loop of about ``budget_s``, keep the best repeat."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 0.2))
    return min(timer.repeat(repeat=REPEATS, number=number)) / number


def rows(n: int, *, uniform: bool = False) -> npt.NDArray[np.float64]:
    iris = np.asarray(load_iris().data, dtype=np.float64)
    if uniform:
        low, high = iris.min(axis=0), iris.max(axis=0)
        return np.random.default_rng(0).uniform(low, high, size=(n, iris.shape[1]))
    return np.ascontiguousarray(np.resize(iris, (n, iris.shape[1])))


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64], help="batch sizes")
    parser.add_argument(
        "--uniform", action="store_true", help="rows drawn uniformly over the features' ranges"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        train(Path(tmp))
        predictor = load_model(Path(tmp))
    assert isinstance(predictor, ForestPredictor)

    print(f"model {predictor.manifest.version}, {len(predictor.estimator.estimators_)} trees")
    print(f"{'rows':>6}  {'sklearn predict_proba':>22}  {'fast path':>10}  {'speed-up':>8}")
    for n in args.rows:
        X = rows(n, uniform=args.uniform)
        if not np.array_equal(predictor.predict_proba(X), predictor.predict_proba_reference(X)):
            raise SystemExit(f"fast path differs from scikit-learn on {n} rows")
        reference = best_per_call(partial(predictor.estimator.predict_proba, X))
        fast = best_per_call(partial(predictor.predict_proba, X))
        print(f"{n:>6}  {fmt(reference):>22}  {fmt(fast):>10}  {reference / fast:>7.1f}x")


if __name__ == "__main__":
    main()
