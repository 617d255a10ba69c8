"""A seeded stand-in for the BioVid Heat Pain database (part A), written in its format.

BioVid is private, so commands without ``--data_dir`` run on this instead. It
writes what the database ships — per-subject folders, files named
``SUBJECT-CLASS-INDEX_bio.csv``, tab-separated columns ``time gsr ecg
emg_trapezius emg_corrugator emg_zygomaticus`` at 512 Hz, 5.5 s (2,816 rows) per
window, 87 subjects × 5 classes × 20 windows by default — from a small
physiological model (docs/biovid.md gives the sources of every number):

* **GSR** (skin conductance, µS): a subject-specific tonic level (log-normal,
  median 2.5 µS) with a slow linear drift, measurement noise from
  ``neurokit2.eda_simulate``, spontaneous (non-specific) responses at a
  subject-specific rate, and a stimulus-evoked response whose probability and
  amplitude rise with the pain level, scaled by a subject's responsiveness
  (log-normal, wide: some people barely respond). Every response has the
  Bateman shape ``exp(−t/τ₂) − exp(−t/τ₁)``, with subject-specific latency
  and time constants.
* **ECG** (mV): ``neurokit2.ecg_simulate`` with a subject-specific resting
  heart rate that rises with the pain level by a subject-specific gain.
* **EMG** (µV): ``neurokit2.emg_simulate`` background with bursts of activity
  that are more likely at higher levels (corrugator most, zygomaticus and
  trapezius less), scaled by a subject-specific expressiveness.

Every subject's traits and windows come from ``numpy.random.default_rng([seed,
subject])``: the data are the same on every machine with the same numpy and
neurokit2 versions, and subject ``i`` is the same whether 4 or 87 subjects are
written. Files are gzip-compressed (``.csv.gz``) unless asked otherwise. The loader
(:mod:`kdjax.data.signals`) does not depend on this module.

Example:
  >>> from kdjax import biovid_synthetic
  >>> biovid_synthetic.write_dataset("biovid_synthetic", num_subjects=4,  # doctest: +SKIP
  ...                                samples_per_class=2, seed=0)
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

SAMPLING_RATE = 512
WINDOW_SECONDS = 5.5
WINDOW_LENGTH = 2816  # WINDOW_SECONDS × SAMPLING_RATE
CLASS_NAMES = ("BL1", "PA1", "PA2", "PA3", "PA4")
COLUMNS = ("time", "gsr", "ecg", "emg_trapezius", "emg_corrugator", "emg_zygomaticus")
# Decimals written per column (time 0.1 ms, GSR 1 nS, ECG and EMG 1 µV): GSR at
# the resolution BioVid's own exports show (values step by 0.001 µS), ECG and EMG
# below their noise. Text of noise does not compress, so this sets the size on disk.
DECIMALS = {"time": 4, "gsr": 3, "ecg": 3, "emg": 0}

# --- Effect sizes by pain level (BL1, PA1, PA2, PA3, PA4); see docs/biovid.md. ---
EVOKED_SCR_PROBABILITY = (0.0, 0.4, 0.65, 0.8, 0.9)
EVOKED_SCR_AMPLITUDE = (0.0, 0.3, 0.55, 0.8, 1.0)  # fraction of the subject's PA4 amplitude
HEART_RATE_RISE = (0.0, 0.2, 0.45, 0.7, 1.0)  # fraction of the subject's PA4 rise
EMG_BURST_PROBABILITY = {
    "emg_corrugator": (0.05, 0.15, 0.3, 0.5, 0.7),
    "emg_zygomaticus": (0.05, 0.08, 0.12, 0.2, 0.3),
    "emg_trapezius": (0.05, 0.1, 0.15, 0.25, 0.35),
}
# Spontaneous SCRs that started up to this long before the window still show in it.
SCR_LOOKBACK_SECONDS = 4.0


@dataclasses.dataclass(frozen=True)
class Subject:
    """One simulated person's traits (units: µS, s, bpm, µV)."""

    name: str
    skin_conductance_level: float
    scr_gain: float  # evoked SCR amplitude at PA4, µS
    scr_latency: float  # stimulus to SCR onset within the window, s
    scr_rise: float  # Bateman τ₁, s
    scr_decay: float  # Bateman τ₂, s
    spontaneous_scr_per_minute: float
    eda_noise: float
    drift_sd: float  # µS/s, per window
    heart_rate: float
    heart_rate_gain: float  # bpm at PA4
    ecg_amplitude: float
    emg_amplitude: dict[str, float]
    expressiveness: float  # multiplies the EMG burst probabilities


def draw_subject(rng: np.random.Generator, index: int) -> Subject:
    """Draws one subject's traits (see docs/biovid.md for the distributions).

    Example:
      >>> draw_subject(np.random.default_rng([0, 3]), 3).name[:6]
      'syn003'
    """
    sex = "m" if rng.random() < 0.5 else "w"
    age = int(rng.integers(18, 66))
    return Subject(
        name=f"syn{index:03d}_{sex}_{age}",
        skin_conductance_level=float(rng.lognormal(np.log(2.5), 0.7)),
        scr_gain=float(rng.lognormal(np.log(0.25), 1.0)),
        scr_latency=float(rng.uniform(1.0, 3.0)),
        scr_rise=float(rng.uniform(0.5, 1.0)),
        scr_decay=float(rng.uniform(2.0, 4.0)),
        spontaneous_scr_per_minute=float(rng.uniform(1.0, 8.0)),
        eda_noise=float(rng.lognormal(np.log(0.004), 0.4)),
        drift_sd=float(rng.lognormal(np.log(0.01), 0.5)),
        heart_rate=float(np.clip(rng.normal(72.0, 9.0), 50.0, 100.0)),
        heart_rate_gain=float(rng.lognormal(np.log(6.0), 0.5)),
        ecg_amplitude=float(rng.lognormal(0.0, 0.25)),
        emg_amplitude={
            muscle: float(rng.lognormal(np.log(70.0), 0.5)) for muscle in EMG_BURST_PROBABILITY
        },
        expressiveness=float(rng.uniform(0.3, 1.5)),
    )


def bateman(times: np.ndarray, rise: float, decay: float) -> np.ndarray:
    """The SCR shape ``exp(−t/τ₂) − exp(−t/τ₁)`` for ``t ≥ 0`` (0 before), scaled to
    peak 1 at ``t* = τ₁τ₂ ln(τ₂/τ₁) / (τ₂ − τ₁)``; ``rise`` = τ₁ < ``decay`` = τ₂.

    Example:
      >>> float(bateman(np.array([0.75 * 2 * np.log(2 / 0.75) / 1.25]), 0.75, 2.0)[0])
      1.0
    """
    peak_time = rise * decay * np.log(decay / rise) / (decay - rise)
    peak = np.exp(-peak_time / decay) - np.exp(-peak_time / rise)
    positive = np.maximum(times, 0.0)
    shape = (np.exp(-positive / decay) - np.exp(-positive / rise)) / peak
    return np.where(times >= 0, shape, 0.0)


def _neurokit():
    import neurokit2

    return neurokit2


def simulate_gsr(subject: Subject, level: int, rng: np.random.Generator) -> np.ndarray:
    """One window of skin conductance (µS) for ``subject`` at pain ``level`` (0–4)."""
    times = np.arange(WINDOW_LENGTH) / SAMPLING_RATE
    # With no SCRs and no drift the simulated signal is constant, so neurokit2 takes
    # the noise amplitude as absolute (µS) rather than relative to the signal's spread.
    noise = _neurokit().eda_simulate(
        length=WINDOW_LENGTH,
        duration=WINDOW_SECONDS,
        sampling_rate=SAMPLING_RATE,
        scr_number=0,
        drift=0.0,
        noise=subject.eda_noise,
        random_state=int(rng.integers(2**31)),
    )
    tonic = subject.skin_conductance_level * rng.lognormal(0.0, 0.1)
    gsr = tonic + (noise - 1.0) + rng.normal(0.0, subject.drift_sd) * times
    span = WINDOW_SECONDS + SCR_LOOKBACK_SECONDS
    spontaneous = rng.poisson(subject.spontaneous_scr_per_minute * span / 60.0)
    for onset in rng.uniform(-SCR_LOOKBACK_SECONDS, WINDOW_SECONDS, spontaneous):
        amplitude = 0.4 * subject.scr_gain * rng.lognormal(0.0, 0.6)
        gsr += amplitude * bateman(times - onset, subject.scr_rise, subject.scr_decay)
    if rng.random() < EVOKED_SCR_PROBABILITY[level]:
        amplitude = subject.scr_gain * EVOKED_SCR_AMPLITUDE[level] * rng.lognormal(0.0, 0.25)
        onset = subject.scr_latency + rng.normal(0.0, 0.15)
        gsr += amplitude * bateman(times - onset, subject.scr_rise, subject.scr_decay)
    return gsr


def simulate_ecg(subject: Subject, level: int, rng: np.random.Generator) -> np.ndarray:
    """One window of ECG (mV) at pain ``level``: ``neurokit2.ecg_simulate``'s simple
    method at the subject's heart rate plus the level's rise, with a trial-to-trial
    spread of 3 bpm."""
    heart_rate = subject.heart_rate + subject.heart_rate_gain * HEART_RATE_RISE[level]
    ecg = _neurokit().ecg_simulate(
        length=WINDOW_LENGTH,
        duration=WINDOW_SECONDS,
        sampling_rate=SAMPLING_RATE,
        heart_rate=float(heart_rate + rng.normal(0.0, 3.0)),
        noise=0.02,
        method="simple",
        random_state=int(rng.integers(2**31)),
    )
    # The simple method's R peak is about 7 units high; 0.15 makes it about 1 mV.
    return 0.15 * subject.ecg_amplitude * np.asarray(ecg)


def simulate_emg(subject: Subject, muscle: str, level: int, rng: np.random.Generator) -> np.ndarray:
    """One window of EMG (µV) of ``muscle``: background, plus one burst of 0.5–1.5 s
    with the level's probability times the subject's expressiveness."""
    probability = min(0.95, EMG_BURST_PROBABILITY[muscle][level] * subject.expressiveness)
    bursts = int(rng.random() < probability)
    emg = _neurokit().emg_simulate(
        length=WINDOW_LENGTH,
        duration=WINDOW_SECONDS,
        sampling_rate=SAMPLING_RATE,
        burst_number=bursts,
        burst_duration=float(rng.uniform(0.5, 1.5)),
        noise=0.01,
        random_state=int(rng.integers(2**31)),
    )
    # emg_simulate centres its bursts; a random circular shift places them anywhere.
    return subject.emg_amplitude[muscle] * np.roll(emg, int(rng.integers(WINDOW_LENGTH)))


def simulate_subject(
    index: int, *, samples_per_class: int = 20, seed: int = 0
) -> tuple[Subject, list[tuple[int, int, dict[str, np.ndarray]]]]:
    """Subject ``index``'s traits and windows: ``(level, file index, {column: values})``
    for ``samples_per_class`` windows of each level, file indices a random
    permutation (the trial order)."""
    rng = np.random.default_rng([seed, index])
    subject = draw_subject(rng, index)
    trial_numbers = rng.permutation(len(CLASS_NAMES) * samples_per_class)
    times = np.arange(WINDOW_LENGTH) / SAMPLING_RATE
    windows = []
    for level in range(len(CLASS_NAMES)):
        for sample in range(samples_per_class):
            columns = {
                "time": times,
                "gsr": simulate_gsr(subject, level, rng),
                "ecg": simulate_ecg(subject, level, rng),
            }
            for muscle in ("emg_trapezius", "emg_corrugator", "emg_zygomaticus"):
                columns[muscle] = simulate_emg(subject, muscle, level, rng)
            number = int(trial_numbers[level * samples_per_class + sample])
            windows.append((level, number, columns))
    return subject, windows


def format_window(columns: dict[str, np.ndarray], names: tuple[str, ...] = COLUMNS) -> str:
    """The tab-separated text of one window: a header of ``names`` and 2,816 rows.

    Example:
      >>> format_window({"time": np.array([0.0]), "gsr": np.array([2.5])}, ("time", "gsr"))
      'time\\tgsr\\n0.0000\\t2.500\\n'
    """
    formats = "\t".join(f"%.{DECIMALS[name.split('_')[0]]}f" for name in names)
    table = np.column_stack([columns[name] for name in names])
    rows = "\n".join(formats % tuple(row) for row in table.tolist())
    return "\t".join(names) + "\n" + rows + "\n"


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    num_subjects: int = 87,
    samples_per_class: int = 20,
    seed: int = 0,
    channels: tuple[str, ...] = COLUMNS[1:],
    compress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Writes the stand-in to ``out_dir/<subject>/<subject>-<class>-<index>_bio.csv``
    and returns ``out_dir``.

    Args:
      out_dir: the data folder; it records its settings in ``synthetic.json`` and
        refuses to mix subjects written with other settings.
      num_subjects, samples_per_class, seed: the size and the seed.
      channels: the signal columns written (``time`` always is); the signals are
        simulated all the same, so a subset holds the same values as the full set.
      compress: gzip each file (``.csv.gz``, about a third of the size).
      log: where progress goes.

    A subject folder is written under a hidden temporary name and renamed when
    complete, so an interrupted run leaves whole subjects only; a rerun with the
    same settings skips the subjects already there.
    """
    if num_subjects < 1 or samples_per_class < 1:
        raise ValueError("num_subjects and samples_per_class must be positive.")
    unknown = [channel for channel in channels if channel not in COLUMNS[1:]]
    if unknown or not channels:
        raise ValueError(f"channels must be among {', '.join(COLUMNS[1:])}; got {channels}.")
    names = ("time", *(column for column in COLUMNS[1:] if column in channels))
    settings = {
        "generator": "kdjax.data.biovid_synthetic",
        "seed": seed,
        "samples_per_class": samples_per_class,
        "columns": list(names),
        "decimals": DECIMALS,
        "compress": compress,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "synthetic.json"
    if manifest.is_file() and json.loads(manifest.read_text()) != settings:
        raise ValueError(
            f"{out_dir} holds a synthetic set written with other settings "
            f"({manifest.read_text().strip()}); use another folder."
        )
    manifest.write_text(json.dumps(settings))
    suffix = ".csv.gz" if compress else ".csv"
    for index in range(num_subjects):
        # The name is the first draw of the subject's stream: cheap to check first.
        name = draw_subject(np.random.default_rng([seed, index]), index).name
        if (out_dir / name).is_dir():
            continue
        subject, windows = simulate_subject(index, samples_per_class=samples_per_class, seed=seed)
        folder = out_dir / subject.name
        partial = out_dir / f".{subject.name}.partial"
        partial.mkdir(exist_ok=True)
        for level, number, columns in windows:
            name = f"{subject.name}-{CLASS_NAMES[level]}-{number:03d}_bio{suffix}"
            text = format_window(columns, names).encode()
            payload = gzip.compress(text, compresslevel=6, mtime=0) if compress else text
            (partial / name).write_bytes(payload)
        partial.replace(folder)
        if (index + 1) % 10 == 0 or index + 1 == num_subjects:
            log(f"Synthetic BioVid: {index + 1}/{num_subjects} subjects written to {out_dir}.")
    return out_dir
