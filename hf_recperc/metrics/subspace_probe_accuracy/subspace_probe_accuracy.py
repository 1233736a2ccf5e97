"""Subspace-restricted probe accuracy: an `evaluate` metric over features and labels.

A thin shell over :class:`hf_recperc.probing.SubspaceProbe`; see the metric card (README.md beside this
file) and docs/science.md section 2 for the definitions.
"""

import datasets
import evaluate
import numpy as np

from hf_recperc.probing import DEFAULT_SUBSPACES, SubspaceProbe
from hf_recperc.spectral import as_float_tensor

_CITATION = """\
@inproceedings{balestriero2024learning,
  title     = {How Learning by Reconstruction Produces Uninformative Features for Perception},
  author    = {Balestriero, Randall and LeCun, Yann},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning},
  series    = {PMLR},
  volume    = {235},
  pages     = {2566--2585},
  year      = {2024},
  note      = {arXiv:2402.11337}
}
"""

_DESCRIPTION = """\
Subspace-restricted probe accuracy measures how well a linear probe classifies when it may only look at
part of the features' PCA spectrum: the top subspace (`top:p`, leading components holding at most a
fraction p of the variance), the bottom subspace (`bottom:q`, the trailing components holding at least q),
the first/last k components, or all of them. Reconstruction objectives spend capacity on the top
subspace; perception often needs the bottom one (Balestriero & LeCun, ICML 2024).

The default read-out is closed-form ridge regression to one-hot labels in the PCA basis (penalty
`ridge * mean eigenvalue`, unpenalised intercept); `probe="logistic"` fits a multinomial logistic
regression with L-BFGS. The PCA and the probes are fitted on the training features and scored on the
evaluated ones. Array inputs skip evaluate's Arrow buffer (slow for large float arrays,
huggingface/evaluate#513).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`array` of shape `(N, D)`): features to score (raw pixels flattened, or embeddings).
    references (`array` of shape `(N,)`): integer class ids of `predictions`.
    train_predictions (`array` of shape `(M, D)`, *optional*): features to fit the PCA and the probes on.
    train_references (`array` of shape `(M,)`, *optional*): their class ids. Without `train_*`, the given
        data is split into a deterministic stratified 80/20 train/test split (`seed`, `test_size`).
    subspaces (`list[str]`, defaults to `["top:0.9", "bottom:0.2", "all"]`): `top:P`, `bottom:P`
        (0 < P <= 1), `first:K`, `last:K`, `all`.
    probe (`str`, defaults to `"ridge"`): `"ridge"` or `"logistic"`.
    ridge (`float`, defaults to 1e-3): penalty as a fraction of the mean eigenvalue.
    standardize (`bool`, defaults to `False`): scale features to unit variance before the PCA.
    seed (`int`, defaults to 0) and test_size (`float`, defaults to 0.2): the split used without `train_*`.
Returns:
    A flat dict of Python scalars. For every subspace `S`: `accuracy/S` (fraction correct), `dims/S`
    (number of PCA components) and `explained_variance/S` (share of the training variance); plus `probe`
    (the read-out used) and `num_train` (rows the probe was fitted on).
Examples:
    >>> import evaluate, numpy as np, hf_recperc
    >>> metric = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)
    >>> rng = np.random.default_rng(0)
    >>> labels = np.arange(400) % 2
    >>> features = rng.normal(size=(400, 8))
    >>> features[:, 0] *= 10          # a loud direction without label information
    >>> features[:, 7] += 2 * labels  # a quiet direction that carries the label
    >>> result = metric.compute(predictions=features, references=labels, subspaces=["first:1", "last:7"])
    >>> result["accuracy/first:1"] < 0.7 < result["accuracy/last:7"]
    True
    >>> result["dims/last:7"], result["probe"], result["num_train"]
    (7, 'ridge', 320)
"""


def _stratified_split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: within each class, a seeded permutation sends `test_size` to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(test_size * members.size))
        test.append(members[:num_test])
        train.append(members[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SubspaceProbeAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2402.11337"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metric; array inputs go straight to the probe, without the Arrow buffer.

        Data added earlier with `add_batch` / `add` is read back through evaluate's usual path.
        """
        if predictions is None and references is None:
            return super().compute(**kwargs)
        return self._compute(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        train_predictions=None,
        train_references=None,
        subspaces=DEFAULT_SUBSPACES,
        probe="ridge",
        ridge=1e-3,
        standardize=False,
        seed=0,
        test_size=0.2,
    ):
        features = as_float_tensor(predictions, "predictions")
        # The evaluated rows may all belong to one class (a per-class report); only training needs two.
        labels = _check_labels(
            references, "references", len(features), min_classes=2 if train_references is None else 1
        )
        if (train_predictions is None) != (train_references is None):
            raise ValueError("train_predictions and train_references: give both or neither")
        if isinstance(subspaces, str):
            subspaces = [subspaces]
        estimator = SubspaceProbe(
            subspaces=tuple(subspaces), probe=probe, ridge=ridge, standardize=standardize
        )
        if train_predictions is None:
            if not (0 < test_size < 1):
                raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
            train_index, test_index = _stratified_split(labels, test_size, seed)
            train_features, train_labels = features[train_index], labels[train_index]
            features, labels = features[test_index], labels[test_index]
        else:
            train_features = as_float_tensor(train_predictions, "train_predictions")
            train_labels = _check_labels(train_references, "train_references", len(train_features))
            if train_features.shape[1] != features.shape[1]:
                raise ValueError(
                    f"train_predictions: expected {features.shape[1]} features per row like predictions, "
                    f"got {train_features.shape[1]}"
                )
        return estimator.fit(train_features, train_labels).score(features, labels)


def _check_labels(labels, name: str, num_rows: int, min_classes: int = 2) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != num_rows:
        raise ValueError(
            f"{name}: expected {num_rows} integer labels (one per feature row), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class ids, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{name}: class ids must be >= 0, got {array.min()}")
    if len(np.unique(array)) < min_classes:
        raise ValueError(f"{name}: need at least {min_classes} classes, got {len(np.unique(array))}")
    return array
