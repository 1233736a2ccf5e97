"""Subspace-restricted probe accuracy: an `evaluate` metric over features and labels.

A thin shell over :mod:`hf_recperc.streaming` (the same code as the torchmetrics twin,
``hf_recperc.torchmetrics.SubspaceProbeAccuracy``); see the metric card (README.md beside this file) and the
paper (Balestriero & LeCun, arXiv 2402.11337, section 2) for the definitions. Requires the ``hf_recperc``
package (declared in ``requirements.txt`` of the Hub layout, ``scripts/push_metric.py``).
"""

import datasets
import evaluate
import torch

from hf_recperc.distributed import FileExchange
from hf_recperc.probing import DEFAULT_SUBSPACES
from hf_recperc.streaming import ProbeStream, subspace_probe_accuracy

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
evaluated ones. Neither arrays nor `add_batch` go through evaluate's Arrow buffer (slow and disk-hungry
for large float arrays, huggingface/evaluate#513): streamed batches are kept as tensors (evaluated rows) or
folded into `D x D` second moments (training rows, `add_batch(..., split="train")`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`array` of shape `(N, D)`): features to score (raw pixels flattened, or embeddings); any
        float dtype (float16 / bfloat16 embeddings are widened, statistics are summed in float64).
    references (`array` of shape `(N,)`): integer class ids of `predictions` (any integer dtype, ids need
        not be contiguous).
    train_predictions (`array` of shape `(M, D)`, *optional*): features to fit the PCA and the probes on.
    train_references (`array` of shape `(M,)`, *optional*): their class ids. Without `train_*` (given here
        or streamed with `add_batch(..., split="train")`), the evaluated rows are split into a deterministic
        stratified 80/20 train/test split (`seed`, `test_size`).
    subspaces (`list[str]`, defaults to `["top:0.9", "bottom:0.2", "all"]`): `top:P`, `bottom:P`
        (0 < P <= 1), `first:K`, `last:K`, `all`.
    probe (`str`, defaults to `"ridge"`): `"ridge"` or `"logistic"` (logistic needs `train_*` as arrays).
    ridge (`float`, defaults to 1e-3): penalty as a fraction of the mean eigenvalue.
    standardize (`bool`, defaults to `False`): scale features to unit variance before the PCA.
    seed (`int`, defaults to 0) and test_size (`float`, defaults to 0.2): the split used without `train_*`.
Streaming: `add_batch(predictions=..., references=..., split="test")` (or `add(prediction=..., reference=...)`)
    inside the evaluation loop, `split="train"` for training rows, then `compute(**settings)`. All processes
    call `compute`: with evaluate's `num_process`/`process_id` it returns the result on process 0 and `None`
    elsewhere; under an initialised `torch.distributed` group, batches added with `add_batch` are merged
    over all ranks and every rank returns the result (arrays given to `compute` alone stay local).
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
    >>> for rows in np.array_split(np.arange(400), 4):  # the same, batch by batch
    ...     metric.add_batch(predictions=features[rows], references=labels[rows])
    >>> metric.compute(subspaces=["first:1", "last:7"]) == result
    True
"""


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

    # evaluate's constructor appends the inputs description to these docstrings: each needs one.
    def add_batch(self, *, predictions=None, references=None, split="test"):
        """Add a batch: features `predictions` `(n, D)` and class ids `references` `(n,)`.

        `split="test"` (default) keeps the rows to score them; `split="train"` folds them into the probe's
        second moments (training rows are never stored). No Arrow file is written.
        """
        if predictions is None or references is None:
            raise ValueError("add_batch: expected both predictions (n, D) and references (n,)")
        self._stream().add(predictions, references, split)

    def add(self, *, prediction=None, reference=None, split="test", predictions=None, references=None):
        """Add one row: feature vector `prediction` `(D,)` and its class id `reference`.

        `predictions=` / `references=` (the input names) are accepted too, as by evaluate's own `add`:
        `evaluate.combine([...]).add(...)` passes them that way.
        """
        for singular, plural, name in (
            (prediction, predictions, "prediction"),
            (reference, references, "reference"),
        ):
            if singular is not None and plural is not None:
                raise ValueError(f"add: give {name}= or {name}s=, not both")
        prediction = prediction if prediction is not None else predictions
        reference = reference if reference is not None else references
        if prediction is None or reference is None:
            raise ValueError("add: expected both prediction (D,) and reference")
        row = prediction if isinstance(prediction, torch.Tensor) else torch.as_tensor(prediction)
        self._stream().add(row.reshape(1, -1), [reference], split)

    def _stream(self) -> ProbeStream:
        if getattr(self, "_probe_stream", None) is None:
            # The previous evaluation's row blocks are refilled rather than newly allocated (BlockPool).
            self._probe_stream = ProbeStream(pool=getattr(self, "_block_pool", None))
            self._block_pool = None
        return self._probe_stream

    def __len__(self):
        stream = getattr(self, "_probe_stream", None)
        return 0 if stream is None else stream.num_rows

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metric from arrays, from the batches added so far, or both (arrays count as a last batch).

        Arrays alone take the direct path (no copy of the rows), on this process only unless evaluate's
        `num_process > 1`. Streamed state is merged across processes first (evaluate's `num_process` files,
        or every rank of an initialised `torch.distributed` group: all must call `compute`), then reset.
        """
        # Arrays alone, without add_batch, are scored as given even under torch.distributed: a common pattern
        # gathers the features itself and calls compute on rank 0 only, which a collective here would hang.
        if getattr(self, "_probe_stream", None) is None and self.num_process == 1:
            if predictions is None and references is None:
                raise ValueError("compute: no data; pass predictions/references or call add_batch() first")
            return self._compute(predictions=predictions, references=references, **kwargs)
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        self._stream_training_rows(kwargs)
        stream, self._probe_stream = self._stream(), None  # a fresh stream for the next evaluation
        if self.num_process > 1:
            if not self._exchange_through_files(stream):
                return None
        elif _world_size() > 1:
            stream.gather()
        result = stream.compute(**kwargs)
        self._block_pool = stream.pool
        return result

    def _stream_training_rows(self, kwargs: dict) -> None:
        """Move ``train_predictions``/``train_references`` given to ``compute`` into the stream as training rows, so
        that they are merged across processes like streamed ones (left in ``kwargs``, only process 0's would reach
        the probe: fitted on 1/N of the training rows, with no error). On one process they stay arrays."""
        if self.num_process == 1 and _world_size() == 1:
            return
        train_predictions = kwargs.pop("train_predictions", None)
        train_references = kwargs.pop("train_references", None)
        if train_predictions is None and train_references is None:
            return
        if kwargs.get("probe", "ridge") != "ridge":
            raise ValueError(
                "train_predictions: across processes the training rows are merged as second moments, which only "
                f"the closed-form probe uses; pass probe='ridge' (got probe={kwargs['probe']!r}) or compute on "
                "one process"
            )
        self.add_batch(predictions=train_predictions, references=train_references, split="train")

    def _exchange_through_files(self, stream: ProbeStream) -> bool:
        """evaluate's multi-process mode: processes > 0 send their state, process 0 merges them all in order.

        Through files beside evaluate's own cache files (`data_dir`, named by `experiment_id` and `num_process`),
        with evaluate's lock handshake and a token per evaluation, so that a file left by a crashed evaluation is
        never merged (`hf_recperc.distributed.FileExchange`); every file is deleted once read. Waits up to
        evaluate's `timeout`. Returns True on process 0, which then holds every process's rows in process order.
        """
        exchange = FileExchange(
            self.data_dir,
            f"{self.experiment_id}-{self.num_process}",
            self.num_process,
            self.process_id,
            self.timeout,
        )
        if self.process_id > 0:
            exchange.send(stream.state())
            return False
        exchange.receive(stream.merge)
        return True

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
        return subspace_probe_accuracy(
            predictions,
            references,
            train_predictions,
            train_references,
            subspaces=subspaces,
            probe=probe,
            ridge=ridge,
            standardize=standardize,
            seed=seed,
            test_size=test_size,
        )


def _world_size() -> int:
    """Processes in the default torch.distributed group (1 when none is initialised)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
