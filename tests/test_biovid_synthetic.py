"""Tests for kdjax.data.biovid_synthetic: the files look like BioVid's, the same seed
gives the same bytes, subjects do not depend on how many are written, and the
simulated physiology moves in the direction the literature reports."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from scipy.signal import find_peaks

from kdjax.data import biovid_synthetic as synthetic
from kdjax.data.signals import CHANNELS, load_biovid, parse_file_name


def file_bytes(root):
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*.csv*"))
    }


def test_files_follow_the_database_layout_and_load(tmp_path):
    root = synthetic.write_dataset(
        tmp_path / "data", num_subjects=2, samples_per_class=2, seed=0, log=lambda _: None
    )
    files = sorted(root.rglob("*_bio.csv.gz"))
    assert len(files) == 2 * 5 * 2
    for path in files:
        subject, label, index = parse_file_name(path.name)
        assert subject == path.parent.name and 0 <= index < 10
    header, first, *rest = gzip.decompress(files[0].read_bytes()).decode().splitlines()
    assert header.split("\t") == list(synthetic.COLUMNS)
    assert len(rest) + 1 == synthetic.WINDOW_LENGTH == 2816
    assert float(rest[0].split("\t")[0]) == pytest.approx(1 / 512, abs=1e-4)
    dataset = load_biovid(root, channels=CHANNELS, log=lambda _: None)
    assert dataset.signals.shape == (20, 2816, 5)
    assert np.bincount(dataset.labels).tolist() == [4] * 5
    assert len(dataset.subject_names) == 2 and dataset.dropped_nans.sum() == 0


def test_the_same_seed_writes_the_same_bytes_and_subjects_do_not_depend_on_the_count(tmp_path):
    def write(name, num_subjects, seed=0, **options):
        return file_bytes(
            synthetic.write_dataset(
                tmp_path / name,
                num_subjects=num_subjects,
                samples_per_class=1,
                seed=seed,
                log=lambda _: None,
                **options,
            )
        )

    two = write("two", 2)
    assert write("again", 2) == two
    one = write("one", 1)
    assert one == {name: data for name, data in two.items() if name in one} and len(one) == 5
    assert set(write("other", 1, seed=1).values()).isdisjoint(one.values())
    gsr_only = write("gsr", 1, channels=("gsr",), compress=False)
    for name, data in gsr_only.items():
        full = gzip.decompress(one[name + ".gz"]).decode().splitlines()
        columns = [line.split("\t")[:2] for line in full]
        assert data.decode().splitlines() == ["\t".join(pair) for pair in columns]


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    synthetic.write_dataset(tmp_path, num_subjects=1, samples_per_class=1, log=lambda _: None)
    with pytest.raises(ValueError, match="other settings"):
        synthetic.write_dataset(tmp_path, num_subjects=1, samples_per_class=1, seed=5)
    with pytest.raises(ValueError, match="channels must be among"):
        synthetic.write_dataset(tmp_path / "x", channels=("eeg",))


def test_bateman_peaks_at_one_where_the_formula_says():
    times = np.linspace(-1.0, 10.0, 11_001)
    shape = synthetic.bateman(times, 0.75, 2.0)
    peak_time = 0.75 * 2.0 * np.log(2.0 / 0.75) / (2.0 - 0.75)
    assert shape.max() == pytest.approx(1.0, abs=1e-6)
    assert times[shape.argmax()] == pytest.approx(peak_time, abs=1e-3)
    assert (shape[times < 0] == 0).all()


def windows(subject, level, count, simulate, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([simulate(subject, level, rng) for _ in range(count)])


def test_skin_conductance_responses_grow_with_the_pain_level():
    subject = synthetic.draw_subject(np.random.default_rng([0, 1]), 1)
    rises = []
    for level in (0, 2, 4):
        gsr = windows(subject, level, 40, synthetic.simulate_gsr)
        rises.append(np.mean(gsr.max(axis=1) - gsr[:, :256].mean(axis=1)))
    assert rises[0] < rises[1] < rises[2]
    assert rises[2] > 0.5 * subject.scr_gain


def heart_rate(ecg: np.ndarray) -> float:
    peaks, _ = find_peaks(ecg, height=0.5 * ecg.max(), distance=int(0.33 * 512))
    return 60.0 * 512 / np.diff(peaks).mean()


def test_heart_rate_rises_with_the_pain_level():
    subject = synthetic.draw_subject(np.random.default_rng([0, 2]), 2)
    rates = [
        np.mean([heart_rate(ecg) for ecg in windows(subject, level, 20, synthetic.simulate_ecg)])
        for level in (0, 4)
    ]
    assert rates[1] - rates[0] == pytest.approx(subject.heart_rate_gain, abs=3.0)


def test_corrugator_bursts_are_more_frequent_at_higher_levels():
    subject = synthetic.draw_subject(np.random.default_rng([0, 3]), 3)

    def corrugator(subject, level, rng):
        return synthetic.simulate_emg(subject, "emg_corrugator", level, rng)

    fractions = []
    for level in (0, 4):
        emg = windows(subject, level, 60, corrugator)
        # A burst raises the window's largest excursion far above the background.
        bursts = (
            np.abs(emg - emg.mean(axis=1, keepdims=True)).max(axis=1)
            > 0.3 * (subject.emg_amplitude["emg_corrugator"])
        )
        fractions.append(bursts.mean())
    expected = [
        min(0.95, p * subject.expressiveness)
        for p in np.array(synthetic.EMG_BURST_PROBABILITY["emg_corrugator"])[[0, 4]]
    ]
    np.testing.assert_allclose(fractions, expected, atol=0.15)
    assert fractions[1] > fractions[0]


def test_a_rerun_keeps_the_subjects_already_written(tmp_path):
    synthetic.write_dataset(tmp_path, num_subjects=1, samples_per_class=1, log=lambda _: None)
    folder = next(path for path in tmp_path.iterdir() if path.is_dir())
    marker = folder / "kept.txt"
    marker.write_text("not rewritten")
    synthetic.write_dataset(tmp_path, num_subjects=2, samples_per_class=1, log=lambda _: None)
    assert marker.is_file() and len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    assert not list(tmp_path.glob(".*partial"))
