"""How learnable is the synthetic BioVid stand-in? (The measurement in docs/biovid.md.)

Writes the stand-in (GSR column only, unless it is already there), loads it through
:func:`kdjax.data.signals.load_biovid` (the pipeline's preprocessing), and trains two
classifiers with optax on each fold of random and subject-grouped 5-fold
cross-validation, for the five-class task and BL1 vs PA4 (with subject-grouped
folds, also the spread of accuracy over the test subjects):

* ``logistic``: multinomial logistic regression on the GSR window averaged into
  88 bins of 62.5 ms, standardised with the training fold's statistics
  (full-batch Adam, 300 steps, L2 1e-3); also fitted per subject on that
  subject's windows alone (the within-subject, person-specific figure);
* ``signal_cnn``: :class:`kdjax.models.signal_models.SignalCNN` on the whole window
  (Adam 1e-3, batch 64, ``--cnn_epochs`` epochs, dropout 0.3).

Run from the repository root::

    python docs/biovid_learnability.py --data_dir=/path/for/biovid_synthetic \
        --cache_dir=/path/for/cache --cnn_epochs=8 --cnn_folds=2
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.data import biovid_synthetic, folds
from kdjax.data.signals import binary_task, level_errors, load_biovid
from kdjax.models.signal_models import SignalCNN

BINS = 88


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic(train_x, train_y, *, num_classes, steps, l2):
    """Full-batch Adam on softmax cross-entropy + l2·|w|²; compiled once per shape."""
    params = {"w": jnp.zeros((train_x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    optimizer = optax.adam(0.05)

    def loss_fn(params):
        logits = train_x @ params["w"] + params["b"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, train_y).mean()
        return loss + l2 * jnp.sum(params["w"] ** 2)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, steps)
    return params


def logistic_regression(train_x, train_y, test_x, num_classes, *, steps=300, l2=1e-3):
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    params = fit_logistic(train_x, train_y, num_classes=num_classes, steps=steps, l2=l2)
    return np.asarray((test_x @ params["w"] + params["b"]).argmax(-1))


def train_cnn(train_x, train_y, test_x, num_classes, *, epochs, seed, batch_size=64):
    model = SignalCNN(num_classes=num_classes)
    key = jax.random.key(seed)
    params = model.init(key, train_x[:1])
    optimizer = optax.adam(1e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, signals, labels, key):
        def loss_fn(params):
            logits = model.apply(params, signals, train=True, rngs={"dropout": key})["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state

    predict = jax.jit(lambda params, signals: model.apply(params, signals)["logits"].argmax(-1))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(train_x))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            key, step_key = jax.random.split(key)
            params, state = step(params, state, train_x[rows], train_y[rows], step_key)
    return np.concatenate(
        [np.asarray(predict(params, test_x[i : i + 512])) for i in range(0, len(test_x), 512)]
    )


def person_specific(dataset):
    """Within-subject: one logistic regression per subject, stratified 4-fold over that
    subject's own windows only (training and test from the same person)."""
    binned = dataset.signals[:, :, 0].reshape(len(dataset), BINS, -1).mean(-1)
    accuracies = []
    for subject in np.unique(dataset.subjects):
        rows = np.flatnonzero(dataset.subjects == subject)
        labels = dataset.labels[rows]
        correct = 0
        for train, test in folds.stratified_k_fold(labels, 4, seed=0):
            predictions = logistic_regression(
                binned[rows[train]], labels[train], binned[rows[test]], dataset.num_classes
            )
            correct += int((predictions == labels[test]).sum())
        accuracies.append(correct / len(rows))
    return accuracies


def evaluate(dataset, scheme, method, args):
    signals = dataset.signals
    if scheme == "random":
        split = folds.k_fold(len(dataset), 5, seed=0)
    else:
        split = folds.subject_k_fold(dataset.subjects, 5, seed=0)
    if method == "signal_cnn":
        split = split[: args.cnn_folds]
    binned = signals[:, :, 0].reshape(len(dataset), BINS, -1).mean(-1)
    results, per_subject = [], []
    for fold, (train, test) in enumerate(split):
        start = time.perf_counter()
        if method == "logistic":
            predictions = logistic_regression(
                binned[train], dataset.labels[train], binned[test], dataset.num_classes
            )
        else:
            predictions = train_cnn(
                signals[train],
                dataset.labels[train],
                signals[test],
                dataset.num_classes,
                epochs=args.cnn_epochs,
                seed=fold,
            )
        labels = dataset.labels[test]
        result = {"accuracy": float((predictions == labels).mean())}
        if dataset.num_classes == 5:
            result |= level_errors(labels, predictions)
        result["seconds"] = time.perf_counter() - start
        results.append(result)
        if scheme == "subject":
            for subject in np.unique(dataset.subjects[test]):
                mine = dataset.subjects[test] == subject
                per_subject.append(float((predictions[mine] == labels[mine]).mean()))
    scores = {key: [result[key] for result in results] for key in results[0]}
    return scores, per_subject


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--num_subjects", type=int, default=87)
    parser.add_argument("--cnn_epochs", type=int, default=8)
    parser.add_argument("--cnn_folds", type=int, default=2)
    parser.add_argument("--methods", default="logistic,signal_cnn")
    args = parser.parse_args()
    start = time.perf_counter()
    biovid_synthetic.write_dataset(args.data_dir, num_subjects=args.num_subjects, channels=("gsr",))
    print(f"stand-in ready in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    five = load_biovid(args.data_dir, cache_dir=args.cache_dir)
    print(f"loaded in {time.perf_counter() - start:.0f} s: {json.dumps(five.summary())}")
    tasks = {"five_class": five, "bl1_vs_pa4": binary_task(five, "bl1_vs_pa4")}
    for method in args.methods.split(","):
        for task, dataset in tasks.items():
            if method == "logistic":
                accuracies = person_specific(dataset)
                row = {"method": method, "task": task, "folds": "within-subject"}
                row["accuracy"] = f"{np.mean(accuracies):.3f} ± {np.std(accuracies):.3f}"
                print(json.dumps(row, ensure_ascii=False), flush=True)
            for scheme in ("random", "subject"):
                scores, per_subject = evaluate(dataset, scheme, method, args)
                summary = {
                    key: f"{np.mean(values):.3f} ± {np.std(values):.3f}"
                    for key, values in scores.items()
                }
                if per_subject:
                    quartiles = np.percentile(per_subject, [0, 25, 50, 75, 100]).round(2)
                    summary["per_subject_accuracy_min_q1_median_q3_max"] = quartiles.tolist()
                row = {"method": method, "task": task, "folds": scheme} | summary
                print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
