"""The pieces of ``experiments.mhist_kd`` that are not the study itself: the backbones in
the model registry, augmentations by name, training a run with image augmentation,
pretrained starting weights, scoring a finished run, model costs, plots and the
seed-protocol table.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from experiments import report
from kdjax import soft_targets
from kdjax.costs import forward_flops
from kdjax.freezing import count_trainable
from kdjax.image_augment import brightness, compose, flip, random_affine, rotate90
from kdjax.metrics import classification_report
from kdjax.models import count_params, get_model
from kdjax.objectives import get_objective, make_hyperparams
from kdjax.pretrained import merge_pretrained
from kdjax.runs import load_run, run_directory, run_identity, train_run
from kdjax.training import Execution, FitResult, Training, fit, make_optimizer

# Until kdjax.models.MODELS lists the backbones itself (two lines for the lead to add
# there), the MHIST command registers them here.

# Keras' scaling for both backbones, x/127.5 − 1, as RunSpec's normalisation
# (x/255 − mean)/std.
INPUT_SCALING = {"input_mean": 0.5, "input_std": 0.5}

AUGMENTS = {
    # Seed 003's ImageDataGenerator (rotation 180°, zoom 0.5–1, brightness 0.2–1),
    # plus flips; drawn per image and per step, training batches only.
    "seed": lambda: compose(
        flip(horizontal=True, vertical=True),
        random_affine(max_degrees=180.0, zoom_range=(0.5, 1.0)),
        brightness(0.2, 1.0),
    ),
    # The 8 exact symmetries of the square: no interpolation.
    "symmetries": lambda: compose(flip(horizontal=True, vertical=True), rotate90()),
    "none": lambda: None,
}


def execution(config) -> Execution:
    return Execution(
        feed=config.feed,
        checkpoint_every=config.checkpoint_every,
        eval_batch_size=config.eval_batch_size,
    )


def train(config, spec, dataset, *, teacher=None, initial_variables=None) -> FitResult:
    """Trains (or resumes, or reuses) ``spec`` with the config's augmentation.

    Without augmentation this is :func:`kdjax.runs.train_run`. ``RunSpec`` has no
    field for image augmentation, so with it this mirrors ``train_run`` for the
    online teacher (the only mode an augmented student may use) and adds the
    augmentation's name to the run's identity.
    """
    augment = AUGMENTS[config.augment]()
    if augment is None:
        return train_run(
            spec,
            dataset,
            config.workdir,
            teacher=teacher,
            initial_variables=initial_variables,
            execution=execution(config),
            log=report.log,
        )
    objective = get_objective(spec.objective)
    if objective.teacher_outputs and (teacher is None or spec.teacher_mode != "online"):
        raise ValueError(f"run {spec.role!r}: an augmented student needs an online teacher.")
    identity = run_identity(spec, dataset, teacher if objective.teacher_outputs else None)
    identity["augment"] = config.augment
    if initial_variables is not None:
        identity["initial_variables"] = soft_targets.params_fingerprint(initial_variables)
    training = Training(
        model=get_model(spec.model, **spec.model_settings),
        objective=objective,
        optimizer=make_optimizer(spec.optimizer, frozen=spec.frozen),
        preprocess=spec.preprocess(),
        augment=augment,
        schedule=spec.schedule(len(dataset.train)),
        teacher=teacher.online() if objective.teacher_outputs else None,
        frozen=spec.frozen,
        initial_variables=initial_variables,
    )
    return fit(
        training,
        name=spec.role,
        run_dir=run_directory(config.workdir, spec, identity),
        run_config=identity,
        hyperparams=make_hyperparams(
            learning_rate=spec.learning_rate,
            temperature=spec.temperature,
            hard_weight=spec.hard_weight,
            soft_weight=spec.soft_weight,
        ),
        train_split=dataset.train,
        test_split=dataset.test,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=list(spec.seed) if spec.population else spec.seed,
        execution=execution(config),
        log=report.log,
    )


def pretrained_start(spec, weights, image_shape) -> dict | None:
    """The variables a run starts from: what :func:`kdjax.training.create_state` draws
    for the spec's (first) seed, with the backbone replaced by the loaded weights
    (``weights`` = ``(path, load_keras_weights(...))``, or None: no pretrained start).

    The core replaces whole variable collections with ``initial_variables``, so the
    head is drawn here with the seed's own key; every member of a population shares
    the seed (and so the start)."""
    if weights is None:
        return None
    seed = spec.seed[0] if spec.population else spec.seed
    init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
    model = get_model(spec.model, **spec.model_settings)
    sample = spec.preprocess()(np.zeros((1, *image_shape), np.uint8))
    variables = jax.jit(lambda: model.init(init_key, sample, train=False))()
    return merge_pretrained(variables, weights[1])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def evaluate_run(run_dir, dataset, config) -> list[dict]:
    """Test-set metrics of every member of the finished run in ``run_dir``, each loaded
    back from its checkpoint and scored from its probabilities."""
    first = load_run(run_dir)
    count = first.spec.population or 1
    reports = []
    for member in range(count):
        trained = first if member == 0 else load_run(run_dir, member=member)
        logits = trained.predict(dataset.test.images, batch_size=config.eval_batch_size)
        reports.append(classification_report(dataset.test.labels, softmax(logits)))
    return reports


def model_costs(specs: dict, image_shape, *, flops: bool = True) -> list[dict]:
    """Parameters (Keras' count: params and BatchNorm statistics), trainable parameters
    and forward FLOPs per image of each distinct (model, trainable layers)."""
    costs, seen = [], set()
    for name, spec in specs.items():
        key = (spec.model, tuple(spec.model_settings.get("trainable", ())))
        if key in seen:
            continue
        seen.add(key)
        model = get_model(spec.model, **spec.model_settings)
        sample = np.zeros((1, *image_shape), np.float32)
        variables = jax.jit(lambda model=model, sample=sample: model.init(
            jax.random.PRNGKey(0), sample))()  # fmt: skip
        costs.append({
            "name": name.rsplit("_seed", 1)[0],
            "model": spec.model,
            "parameters": count_params(variables),
            "trainable_parameters": count_trainable(
                variables["params"], spec.model_settings.get("trainable", ("*",))
            ),
            "flops_per_example": forward_flops(model, variables, image_shape, batch_size=1)
            if flops else None,
        })  # fmt: skip
    return costs


def plot_sweep(path: Path, values, summaries: list[dict], kind: str, title: str) -> Path:
    """F1 and ROC AUC (mean ± std over seeds) against the swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4))
    for metric, label in (("f1", "F1 (SSA positive)"), ("roc_auc", "ROC AUC")):
        means = [100 * s[metric]["mean"] for s in summaries]
        stds = [100 * s[metric]["std"] for s in summaries]
        axes.errorbar(values, means, yerr=stds, marker="o", capsize=4, label=label)
    if kind == "temperature":
        axes.set_xscale("log", base=2)
    axes.set_xticks(list(values), [f"{v:g}" for v in values])
    axes.set_xlabel("temperature T" if kind == "temperature" else "alpha (weight of CE)")
    axes.set_ylabel("test score (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def seed_protocol_rows(config) -> list[list[str]]:
    """Seed 003's Task 2 protocol beside this command's settings."""
    kd = f"alpha {config.alpha:g}, T {config.temperature:g}"
    return [
        ["teacher", "ResNet50V2 ImageNet, layers[:185] frozen, last 5 trainable",
         f"ResNet50V2, trains {', '.join(config.teacher_trainable)}"],
        ["student", "MobileNetV2 ImageNet, base frozen, dense head",
         f"MobileNetV2, trains the head + last {config.student_trainable_blocks} blocks"],
        ["optimiser", "Adam 1e-4 (teacher), 1e-3 (students), batch 32, 25 epochs",
         f"Adam {config.teacher_learning_rate:g} / {config.learning_rate:g}, batch "
         f"{config.batch_size}, {config.teacher_epochs} / {config.epochs} epochs"],
        ["inputs", "x/255 (Keras' backbones expect x/127.5 − 1)", "x/127.5 − 1"],
        ["augmentation", "drawn once per image before training, test images too",
         f"'{config.augment}', per step in the compiled step, training batches only"],
        ["teacher outputs", "Keras model in the step", f"{config.teacher_mode} teacher"],
        ["KD loss", "softmax applied to softmax outputs (heads end in softmax)",
         f"alpha·CE + (1−alpha)·T²·KL on logits; {kd}"],
        ["sweeps", "T ∈ {1,2,4,16,32,64} (alpha 0.5); alpha ∈ {0.1…0.9} (T 2); one run each",
         f"T ∈ {{{','.join(f'{t:g}' for t in config.temperatures)}}}; alpha ∈ "
         f"{{{','.join(f'{a:g}' for a in config.alphas)}}} (T "
         f"{config.alpha_sweep_temperature:g}); {config.seeds} seeds, populations"],
        ["'from scratch'", "the frozen-base student trained with CE",
         "student_transfer; student_scratch is random weights, all layers trained"],
        ["TA chain", "defines a MobileNetV2 TA, trains a frozen ResNet50V2 one",
         f"MobileNetV2 assistant training its last {config.assistant_trainable_blocks} "
         "block(s) + head"],
        ["ROC AUC", "from argmax labels", "from probabilities"],
        ["seeds", "1", str(config.seeds)],
    ]  # fmt: skip


__all__ = [
    "AUGMENTS",
    "INPUT_SCALING",
    "evaluate_run",
    "execution",
    "model_costs",
    "plot_sweep",
    "pretrained_start",
    "seed_protocol_rows",
    "softmax",
    "train",
]
