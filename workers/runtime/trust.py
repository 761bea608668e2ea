"""What an uploaded scikit-learn model may contain: named classes, data, and nothing callable.

A skops file is a zip of `schema.json` (a tree of nodes, each naming how it is built and of
which type) and `.npy` arrays. Before skops builds anything, every node of the tree is checked
here against an explicit allowlist:

- estimator and transformer classes, and the sklearn/numpy types their fitted state needs,
  each by its full name (never a module prefix: `sklearn.` holds plain functions too);
- containers, numbers, strings, arrays, dtypes and random states;
- never a function, method, `functools.partial`, operator, or an object rebuilt by calling an
  arbitrary constructor (`__reduce__`), wherever it sits (a FunctionTransformer's func, a
  callable hyperparameter, a scorer);
- every type skops itself would ask to trust must be on the list as well.

Some allowed types keep raw indices into their own arrays that native code follows without
bounds checks (decision trees, histogram gradient-boosting predictors); skops leaves them
untrusted for that reason. They are allowed only after `check_structure` has verified every
index, so a crafted file cannot read or write out of bounds when a job runs it. k-neighbors
models must use brute-force search: their KD/ball-tree indexes are refused.
"""

from __future__ import annotations

import json
import zipfile
from typing import Any

import numpy as np

#: Classes an ObjectNode may build.
ALLOWED_CLASSES = frozenset(
    {
        # linear models
        "sklearn.linear_model._base.LinearRegression",
        "sklearn.linear_model._bayes.BayesianRidge",
        "sklearn.linear_model._coordinate_descent.ElasticNet",
        "sklearn.linear_model._coordinate_descent.Lasso",
        "sklearn.linear_model._huber.HuberRegressor",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.linear_model._perceptron.Perceptron",
        "sklearn.linear_model._ridge.Ridge",
        "sklearn.linear_model._ridge.RidgeClassifier",
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn.linear_model._stochastic_gradient.SGDRegressor",
        "sklearn.svm._classes.LinearSVC",
        "sklearn.svm._classes.LinearSVR",
        # trees and ensembles (their Tree / TreePredictor state is checked by check_structure)
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.tree._classes.ExtraTreeRegressor",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.RandomForestRegressor",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.ExtraTreesRegressor",
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.ensemble._gb.GradientBoostingRegressor",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.dummy.DummyClassifier",
        "sklearn.dummy.DummyRegressor",
        # neighbours (brute force only), naive Bayes, neural networks
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neighbors._regression.KNeighborsRegressor",
        "sklearn.naive_bayes.BernoulliNB",
        "sklearn.naive_bayes.GaussianNB",
        "sklearn.naive_bayes.MultinomialNB",
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        "sklearn.neural_network._multilayer_perceptron.MLPRegressor",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        # transformers and pipelines
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.Binarizer",
        "sklearn.preprocessing._data.MaxAbsScaler",
        "sklearn.preprocessing._data.MinMaxScaler",
        "sklearn.preprocessing._data.Normalizer",
        "sklearn.preprocessing._data.RobustScaler",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._label.LabelBinarizer",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.preprocessing._polynomial.PolynomialFeatures",
        "sklearn.decomposition._pca.PCA",
        "sklearn.decomposition._truncated_svd.TruncatedSVD",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.feature_selection._variance_threshold.VarianceThreshold",
        # the loss and link objects of fitted gradient-boosting and linear models
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.LogLink",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.loss.AbsoluteError",
        "sklearn._loss.loss.ExponentialLoss",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.loss.HalfPoissonLoss",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn._loss.loss.HuberLoss",
        "sklearn._loss.loss.PinballLoss",
    }
)

#: Native loss objects a LossNode may build (constructor arguments are numbers).
ALLOWED_LOSSES = frozenset(
    {
        *(
            f"sklearn._loss._loss.Cy{name}"
            for name in (
                "AbsoluteError",
                "ExponentialLoss",
                "HalfBinomialLoss",
                "HalfMultinomialLoss",
                "HalfPoissonLoss",
                "HalfSquaredError",
                "HuberLoss",
                "PinballLoss",
            )
        ),
        *(
            f"sklearn.linear_model._sgd_fast.{name}"
            for name in (
                "EpsilonInsensitive",
                "Hinge",
                "ModifiedHuber",
                "SquaredEpsilonInsensitive",
                "SquaredHinge",
            )
        ),
    }
)

_NUMPY_SCALARS = frozenset(
    f"numpy.{name}"
    for name in (
        "bool_ float16 float32 float64 longdouble int8 int16 int32 int64 uint8 uint16 uint32 "
        "uint64 complex64 complex128 str_ bytes_ intc uintc longlong ulonglong"
    ).split()
)
_PRIMITIVES = frozenset(f"builtins.{n}" for n in ("str", "int", "float", "bool", "NoneType"))
_BIT_GENERATORS = frozenset(
    f"numpy.random.{n}" for n in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
)

#: For each way of building a node: the types it may build. A loader that is not here
#: (FunctionNode, MethodNode, PartialNode, OperatorFuncNode, ReduceNode,
#: ConstructorFromReduceNode, SparseMatrixNode, DefaultDictNode ...) is refused outright.
_LOADERS: dict[str, frozenset[str]] = {
    "ObjectNode": ALLOWED_CLASSES,
    "TreeNode": frozenset({"sklearn.tree._tree.Tree"}),
    "LossNode": ALLOWED_LOSSES,
    "JsonNode": _PRIMITIVES,
    "DictNode": frozenset({"builtins.dict", "collections.OrderedDict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "SetNode": frozenset({"builtins.set"}),
    "SliceNode": frozenset({"builtins.slice"}),
    "NdArrayNode": frozenset({"numpy.ndarray"}) | _NUMPY_SCALARS,
    "DTypeNode": frozenset({"numpy.dtype"}),
    # A type object as a value (a dtype hyperparameter): plain numbers and numpy scalars only.
    "TypeNode": _PRIMITIVES | _NUMPY_SCALARS,
    "RandomStateNode": frozenset({"numpy.random.mtrand.RandomState"}),
    "RandomGeneratorNode": frozenset({"numpy.random._generator.Generator"}),
    "CachedNode": frozenset(),  # a reference to a node already checked; no type of its own
}
#: Types skops may ask to trust beyond the nodes themselves (a Generator's bit generator).
_EXTRA_TYPES = _BIT_GENERATORS | _PRIMITIVES | _NUMPY_SCALARS

MAX_SCHEMA_BYTES = 64 * 1024 * 1024


class UntrustedModel(Exception):
    """The file is not something the farm will load; the message says why, without paths."""


def audit_skops(path: str, max_unpacked_bytes: int) -> list[str]:
    """The types to pass to skops.io.load(trusted=...), once every node has been checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
            if unpacked > max_unpacked_bytes:
                raise UntrustedModel(
                    f"the file unpacks to {unpacked} bytes; the limit is {max_unpacked_bytes}"
                )
            info = archive.getinfo("schema.json")
            if info.file_size > MAX_SCHEMA_BYTES:
                raise UntrustedModel("the file's schema.json is too large")
            schema = json.loads(archive.read(info))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, RecursionError) as exc:
        raise UntrustedModel(f"not a readable skops file ({type(exc).__name__})") from None
    found: set[str] = set()
    refused: set[str] = set()
    _walk(schema, found, refused)
    if refused:
        raise UntrustedModel("the file contains types that are not allowed: " + _names(refused))
    import skops.io  # after the walk: nothing of the file has been built yet

    try:
        declared = set(skops.io.get_untrusted_types(file=path))
    except Exception as exc:  # skops raises many kinds for a malformed tree
        raise UntrustedModel(f"not a readable skops file ({type(exc).__name__})") from None
    not_allowed = {t for t in declared if t not in found and t not in _EXTRA_TYPES}
    if not_allowed:
        raise UntrustedModel("the file contains types that are not allowed: " + _names(not_allowed))
    return sorted(found | declared)


def _names(types: set[str]) -> str:
    listed = sorted(types)
    more = f" and {len(listed) - 20} more" if len(listed) > 20 else ""
    return ", ".join(listed[:20]) + more


def _walk(node: Any, found: set[str], refused: set[str]) -> None:
    """Visit every JSON object of the schema: a superset of the nodes skops will build."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list):
            stack.extend(current)
            continue
        if not isinstance(current, dict):
            continue
        if "__loader__" in current:
            loader = current["__loader__"]
            name = f"{current.get('__module__')}.{current.get('__class__')}"
            allowed = _LOADERS.get(loader) if isinstance(loader, str) else None
            if allowed is None:
                refused.add(f"{name} ({loader if isinstance(loader, str) else 'unknown'})")
            elif loader != "CachedNode":
                (found if name in allowed else refused).add(name)
        stack.extend(current.values())


# -- after loading: the indices that native code follows --------------------------------------


_ENSEMBLE_MEMBERS = frozenset(
    f"sklearn.tree._classes.{name}"
    for name in (
        "DecisionTreeClassifier",
        "DecisionTreeRegressor",
        "ExtraTreeClassifier",
        "ExtraTreeRegressor",
    )
)


def check_structure(estimator: Any) -> None:
    """Raise UntrustedModel unless every tree, predictor and neighbour index is in bounds.

    An ensemble hands its own validated input to its members without checking it again, so
    each member must declare the ensemble's width: `ensemble_width` is passed down to them.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, int | None]] = [(estimator, None)]
    while stack:
        obj, ensemble_width = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, list | tuple):
            stack.extend((o, ensemble_width) for o in obj)
        elif isinstance(obj, dict):
            stack.extend((o, ensemble_width) for o in obj.values())
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend((o, ensemble_width) for o in obj.ravel().tolist())
        elif hasattr(obj, "__dict__"):
            stack.extend(_check_object(obj, ensemble_width))


def _check_object(obj: Any, ensemble_width: int | None) -> list[tuple[Any, int | None]]:
    """Check one object; returns its attributes to visit, with the width they inherit."""
    state = vars(obj)
    type_name = f"{type(obj).__module__}.{type(obj).__name__}"
    width = state.get("n_features_in_")
    if width is not None and (not isinstance(width, int | np.integer) or width < 0):
        raise UntrustedModel(f"{type_name} has an invalid n_features_in_")
    if ensemble_width is not None and type_name in _ENSEMBLE_MEMBERS:
        # Forest members are fitted without recording a width; the ensemble's is theirs.
        if width is not None and width != ensemble_width:
            raise UntrustedModel(f"{type_name} does not match its ensemble's input width")
        width = ensemble_width
    if state.get("tree_") is not None:
        if width is None:
            raise UntrustedModel(f"{type_name} has a tree but no input width")
        _check_tree(state["tree_"], int(width))
    if type_name.endswith(".TreePredictor"):
        if ensemble_width is None:
            raise UntrustedModel("a gradient-boosting tree outside its ensemble")
        _check_predictor(obj, ensemble_width)
    if type_name.startswith("sklearn.neighbors.") and state.get("_tree") is not None:
        raise UntrustedModel(
            "k-neighbors models must use brute-force search (algorithm='brute'): "
            "KD-tree and ball-tree indexes are not accepted"
        )
    is_ensemble = "estimators_" in state or "_predictors" in state
    inherited = int(width) if is_ensemble and width is not None else None
    return [(value, inherited) for value in state.values()]


def _check_tree(tree: Any, width: int) -> None:
    state = tree.__getstate__()
    nodes = state["nodes"]
    count = len(nodes)
    if state["node_count"] != count or count == 0:
        raise UntrustedModel("a decision tree's node count does not match its nodes")
    left = nodes["left_child"].astype(np.int64)
    right = nodes["right_child"].astype(np.int64)
    feature = nodes["feature"].astype(np.int64)
    index = np.arange(count)
    leaf = left == -1
    # Children come after their parent (so every path ends), inside the array; a leaf has none.
    inner_ok = (left > index) & (left < count) & (right > index) & (right < count)
    if not np.all(np.where(leaf, right == -1, inner_ok)):
        raise UntrustedModel("a decision tree has child indices out of range")
    limit = min(int(tree.n_features), width)
    if not np.all(leaf | ((feature >= 0) & (feature < limit))):
        raise UntrustedModel("a decision tree uses features out of range")


def _check_predictor(predictor: Any, width: int) -> None:
    nodes = predictor.nodes
    count = len(nodes)
    if count == 0:
        raise UntrustedModel("a gradient-boosting tree has no nodes")
    index = np.arange(count)
    leaf = nodes["is_leaf"].astype(bool)
    left = nodes["left"].astype(np.int64)
    right = nodes["right"].astype(np.int64)
    feature = nodes["feature_idx"].astype(np.int64)
    inner_ok = (left > index) & (left < count) & (right > index) & (right < count)
    inner_ok &= (feature >= 0) & (feature < width)
    if not np.all(leaf | inner_ok):
        raise UntrustedModel("a gradient-boosting tree has indices out of range")
    if np.any(nodes["is_categorical"].astype(bool) & ~leaf):
        raise UntrustedModel("gradient-boosting trees with categorical splits are not accepted")
