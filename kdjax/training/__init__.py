"""The training core: state, step, feeds, evaluation and the loop.

Data flows one way: data → teacher outputs (stored, or an :class:`OnlineTeacher`
in the step) → objective (:mod:`kdjax.distill.objectives`) → step (:mod:`.step`) → feed
(:mod:`.feeds`) → loop (:func:`fit`) → checkpoints and results. :func:`fit` takes
its inputs as records (:mod:`.records`): what is trained, the data, the plan, the
run and how it executes. A single run::

    from kdjax.distill.objectives import get_objective, make_hyperparams
    from kdjax.training import Plan, Run, Training, TrainingData, fit, make_optimizer

    result = fit(
        Training(model, get_objective("kd"), make_optimizer("adam"), preprocess),
        TrainingData(dataset.train, dataset.test, {"teacher_logits": stored_logits}),
        Plan(epochs=3, batch_size=128, seed=0,
             hyperparams=make_hyperparams(learning_rate=1e-3, temperature=3.0,
                                          hard_weight=0.7, soft_weight=0.3)),
        Run("student", Path("runs/student"), {"model": "small_conv_net"}),
    )

The folds of a cross-validation train as one population: ``Plan(seed=[0, 1, 2],
folds=Folds.of(k_fold(n, 3)), ...)``. :mod:`.recipe` builds the records a
:class:`kdjax.runs.spec.RunSpec` describes.
"""

from kdjax.training.evaluation import (
    accuracy,
    evaluate,
    make_correct_counter,
    padded_batches,
    predict,
    recompute_batch_stats,
    split_accuracy,
)
from kdjax.training.feeds import (
    FEEDS,
    DeviceFeed,
    HostFeed,
    device_memory_bytes,
    epoch_permutation,
    make_feed,
    resolve_feed,
)
from kdjax.training.loop import fit
from kdjax.training.members import Members
from kdjax.training.monitor import NonFiniteLossError, check_finite
from kdjax.training.precision import COMPUTE_DTYPES, MixedPrecisionModel, with_compute_dtype
from kdjax.training.records import (
    Execution,
    FitResult,
    Folds,
    Plan,
    Run,
    Training,
    TrainingData,
)
from kdjax.training.state import (
    TrainState,
    cosine_decay,
    create_state,
    make_optimizer,
    max_norm_constraint,
    step_decay,
    trainable_mask,
)
from kdjax.training.step import (
    STRATEGIES,
    OnlineTeacher,
    make_train_step,
    over_members,
    population_step,
    scan_steps,
)

__all__ = [
    "COMPUTE_DTYPES",
    "MixedPrecisionModel",
    "with_compute_dtype",
    "FEEDS",
    "DeviceFeed",
    "Execution",
    "FitResult",
    "Folds",
    "HostFeed",
    "Members",
    "NonFiniteLossError",
    "OnlineTeacher",
    "Plan",
    "Run",
    "STRATEGIES",
    "TrainState",
    "Training",
    "TrainingData",
    "accuracy",
    "check_finite",
    "cosine_decay",
    "create_state",
    "device_memory_bytes",
    "epoch_permutation",
    "evaluate",
    "fit",
    "make_correct_counter",
    "make_feed",
    "make_optimizer",
    "make_train_step",
    "max_norm_constraint",
    "over_members",
    "padded_batches",
    "population_step",
    "predict",
    "recompute_batch_stats",
    "resolve_feed",
    "scan_steps",
    "split_accuracy",
    "step_decay",
    "trainable_mask",
]
