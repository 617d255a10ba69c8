"""Tests for kdjax.data.signals: the preprocessing steps, both folder layouts, the error
for every kind of bad input, the cache, the two-class tasks and the level errors.

Every CSV here is written by hand by the test (a few rows, tab-separated); none
comes from the synthetic generator.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import savgol_filter

from kdjax.data import DataError
from kdjax.data.signals import (
    BINARY_TASKS,
    binary_task,
    drop_nans,
    drop_outliers,
    find_samples,
    fit_length,
    level_errors,
    load_biovid,
    min_max,
    parse_file_name,
    preprocess,
    read_channels,
    samples_folder,
    smooth,
)

HEADER = "time\tgsr\tecg\temg_trapezius\temg_corrugator\temg_zygomaticus"
ROWS = 40


def pipeline_preprocess(signal: np.ndarray) -> np.ndarray:
    """The BioVid pipeline's ``preprocess_gsr_signal``, copied as the reference (valid inputs)."""
    signal = np.array(signal)
    signal = signal[~np.isnan(signal)]
    smoothed = savgol_filter(signal, window_length=5, polyorder=2)
    z_scores = (smoothed - smoothed.mean()) / smoothed.std()
    kept = smoothed[z_scores < 3]
    return (kept - kept.min()) / (kept.max() - kept.min())


def sample_text(gsr: np.ndarray, *, columns: str = HEADER) -> str:
    rows = [columns]
    for index, value in enumerate(gsr):
        ecg, emg = np.sin(index), np.cos(index)
        rows.append(f"{index / 512:.4f}\t{value}\t{ecg:.3f}\t{emg:.1f}\t{emg:.1f}\t{-emg:.1f}")
    return "\n".join(rows) + "\n"


def gsr_values(label: int, variant: int) -> np.ndarray:
    """A distinct, recognisable signal per class and sample."""
    ramp = np.linspace(0.0, 1.0, ROWS)
    return 2.0 + (label + 1) * ramp**2 + 0.01 * variant * np.sin(7 * ramp)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def per_subject_tree(root: Path, subjects=("072414_m_23", "081609_w_40"), per_class=1) -> Path:
    for subject in subjects:
        for label, name in enumerate(("BL1", "PA1", "PA2", "PA3", "PA4")):
            for index in range(per_class):
                path = root / subject / f"{subject}-{name}-{label * 10 + index:03d}_bio.csv"
                write(path, sample_text(gsr_values(label, index)))
    return root


# --- preprocessing ---------------------------------------------------------------------


def test_drop_nans_removes_and_counts_them():
    kept, count = drop_nans(np.array([1.0, np.nan, 2.0, np.nan]))
    np.testing.assert_array_equal(kept, [1.0, 2.0])
    assert count == 2


def test_smoothing_keeps_a_parabola_and_averages_a_spike():
    parabola = np.arange(10.0) ** 2
    np.testing.assert_allclose(smooth(parabola), parabola, atol=1e-9)
    spike = np.zeros(11)
    spike[5] = 1.0
    # Savitzky–Golay (5, 2) weights are (−3, 12, 17, 12, −3) / 35.
    np.testing.assert_allclose(smooth(spike)[3:8], np.array([-3, 12, 17, 12, -3]) / 35)


def test_outliers_are_dropped_one_sided_as_in_the_pipeline():
    signal = np.r_[np.zeros(30), 10.0, -10.0]
    kept, count = drop_outliers(signal)
    z = (signal - signal.mean()) / signal.std()
    assert z[30] >= 3 and z[31] <= -3
    assert count == 1 and -10.0 in kept and 10.0 not in kept


def test_constant_signal_has_no_outliers_and_normalises_to_zeros():
    kept, count = drop_outliers(np.full(8, 3.0))
    assert count == 0 and kept.size == 8
    np.testing.assert_array_equal(min_max(np.full(4, 3.0)), np.zeros(4))


def test_fit_length_pads_with_zeros_or_truncates():
    np.testing.assert_array_equal(fit_length(np.array([1.0, 2.0]), 4), [1.0, 2.0, 0.0, 0.0])
    np.testing.assert_array_equal(fit_length(np.arange(5.0), 3), [0.0, 1.0, 2.0])


def test_preprocess_equals_the_pipelines_function():
    rng = np.random.default_rng(0)
    signal = np.cumsum(rng.normal(size=300))
    signal[[17, 150]] = np.nan
    signal[200] = 80.0  # an artefact far above the rest
    clean, dropped = preprocess(signal)
    reference = pipeline_preprocess(signal)
    np.testing.assert_allclose(clean, reference)
    assert dropped.nans == 2
    assert dropped.outliers == 298 - reference.size > 0
    assert clean.min() == 0.0 and clean.max() == 1.0


def test_a_signal_shorter_than_the_smoothing_window_is_refused():
    with pytest.raises(ValueError, match="smoothing window"):
        preprocess(np.array([1.0, 2.0, 3.0]))


# --- file names and layouts -------------------------------------------------------------


def test_parse_file_name_reads_subject_class_and_index():
    assert parse_file_name("072414_m_23-PA2-034_bio.csv") == ("072414_m_23", 2, 34)
    assert parse_file_name("081609_w_40-BL1-001_bio.csv.gz") == ("081609_w_40", 0, 1)
    assert parse_file_name("081609_w_40-PA5-001_bio.csv") is None
    assert parse_file_name("sample.csv") is None


def test_per_subject_layout_gives_classes_subjects_and_preprocessed_signals(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    dataset = load_biovid(root, log=lambda _: None)
    assert dataset.signals.shape == (10, ROWS, 1) and dataset.signals.dtype == np.float32
    assert dataset.subject_names == ("072414_m_23", "081609_w_40")
    np.testing.assert_array_equal(dataset.labels, [0, 1, 2, 3, 4] * 2)
    np.testing.assert_array_equal(dataset.subjects, [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(dataset.ids, np.arange(10))
    first = dataset.names.tolist().index("081609_w_40/081609_w_40-PA3-030_bio.csv")
    expected = fit_length(pipeline_preprocess(gsr_values(3, 0)), ROWS)
    np.testing.assert_allclose(dataset.signals[first, :, 0], expected, rtol=1e-6, atol=1e-7)
    summary = dataset.summary()
    assert summary["class_counts"] == [2] * 5 and summary["subjects"] == 2


def test_the_databases_extracted_folder_is_read_from_its_filtered_signals(tmp_path):
    part_a = tmp_path / "PartA"
    filtered = per_subject_tree(part_a / "biosignals_filtered")
    # The raw signals beside them (another scale: reading them would change the data),
    # the videos and the database's sample list are not read.
    raw = per_subject_tree(part_a / "biosignals_raw", subjects=("072414_m_23",))
    for path in raw.rglob("*.csv"):
        path.write_text(sample_text(1000 + np.arange(ROWS, dtype=np.float64)))
    write(part_a / "video" / "072414_m_23" / "072414_m_23-BL1-000.mp4", "")
    write(part_a / "samples.csv", "subject_id\tsubject_name\n")
    assert samples_folder(part_a) == filtered and samples_folder(filtered) == filtered
    messages = []
    whole = load_biovid(part_a, cache_dir=tmp_path / "cache", log=messages.append)
    direct = load_biovid(filtered, log=lambda _: None)
    np.testing.assert_array_equal(whole.signals, direct.signals)
    assert whole.names.tolist() == direct.names.tolist()
    assert whole.names[0] == "072414_m_23/072414_m_23-BL1-000_bio.csv"
    assert f"from {filtered} " in messages[-2]
    # The same samples: the preprocessed cache written through one path serves the other.
    cached = []
    load_biovid(filtered, cache_dir=tmp_path / "cache", log=cached.append)
    assert "from the cache" in cached[0]


def test_a_folder_without_samples_names_the_folder_to_pass(tmp_path):
    (tmp_path / "PartA" / "biosignals_raw" / "072414_m_23").mkdir(parents=True)
    with pytest.raises(DataError, match="the one that holds biosignals_filtered/"):
        load_biovid(tmp_path / "PartA", log=lambda _: None)


def test_pain_level_layout_with_numbered_or_named_folders(tmp_path):
    for folders in (("0", "1", "2", "3", "4"), ("BL1", "PA1", "PA2", "PA3", "PA4")):
        root = tmp_path / folders[0]
        for label, folder in enumerate(folders):
            write(
                root / folder / f"072414_m_23-{('BL1', 'PA1', 'PA2', 'PA3', 'PA4')[label]}-"
                f"00{label}_bio.csv",
                sample_text(gsr_values(label, 0)),
            )
            write(root / folder / f"window{label}.csv", sample_text(gsr_values(label, 1)))
        layout, samples = find_samples(root)
        assert layout == "pain-level"
        dataset = load_biovid(root, log=lambda _: None)
        np.testing.assert_array_equal(np.bincount(dataset.labels), [2] * 5)
        # Database-style names give the subject; others leave it unknown (-1).
        named = np.char.find(dataset.names.astype(str), "072414") >= 0
        assert (dataset.subjects[named] == 0).all() and (dataset.subjects[~named] == -1).all()


def test_several_channels_come_in_the_order_asked(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    path = next((root / "072414_m_23").iterdir())
    values = read_channels(path, ("emg_zygomaticus", "gsr"))
    assert values.shape == (ROWS, 2)
    np.testing.assert_allclose(values[:, 0], -np.round(np.cos(np.arange(ROWS)), 1))
    dataset = load_biovid(root, channels=("ecg", "gsr"), log=lambda _: None)
    assert dataset.signals.shape == (10, ROWS, 2) and dataset.channels == ("ecg", "gsr")


def test_gzip_files_are_read_like_plain_ones(tmp_path):
    plain = write(tmp_path / "s-PA1-001_bio.csv", sample_text(gsr_values(1, 0)))
    packed = tmp_path / "s-PA1-002_bio.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_channels(plain, ("gsr",)), read_channels(packed, ("gsr",)))


def test_nans_are_dropped_counted_and_padded(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    path = root / "072414_m_23" / "072414_m_23-PA2-020_bio.csv"
    lines = path.read_text().splitlines()
    for row in (3, 9):
        fields = lines[row].split("\t")
        fields[1] = "" if row == 3 else "NaN"
        lines[row] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")
    dataset = load_biovid(root, log=lambda _: None)
    row = dataset.names.tolist().index("072414_m_23/072414_m_23-PA2-020_bio.csv")
    assert dataset.dropped_nans[row, 0] == 2 and dataset.dropped_nans.sum() == 2
    assert dataset.summary()["dropped_nans"] == {"gsr": 2}
    np.testing.assert_array_equal(dataset.signals[row, -2:, 0], [0.0, 0.0])


# --- bad input: one DataError naming the file -------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        (HEADER + "\n", "no data rows"),
        ("time\tecg\n0.0\t1.0\n", "no column gsr"),
        ("time,gsr\n0.0,1.0\n", "no column gsr.*tab-separated"),
        (HEADER + "\n0\t1\t2\t3\t4\t5\n0\t1\t2\t3\t4\t5\t6\t7\n", "malformed table"),
        (sample_text(gsr_values(0, 0)).replace("\t2.0\t", "\tabc\t", 1), "row 2 column gsr: 'abc'"),
    ],
)
def test_a_bad_file_raises_one_line_naming_it(tmp_path, text, message):
    root = per_subject_tree(tmp_path / "data")
    bad = write(root / "072414_m_23" / "072414_m_23-PA4-099_bio.csv", text)
    with pytest.raises(DataError, match=message) as error:
        load_biovid(root, log=lambda _: None)
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_a_file_name_without_a_class_is_an_error(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    write(root / "072414_m_23" / "072414_m_23-extra_bio.csv", sample_text(gsr_values(0, 0)))
    with pytest.raises(
        DataError, match="072414_m_23-extra_bio.csv: the file name carries no class"
    ):
        load_biovid(root, log=lambda _: None)


def test_an_unknown_level_folder_is_an_error(tmp_path):
    for label in (0, 1):
        write(tmp_path / str(label) / "a.csv", sample_text(gsr_values(label, 0)))
    (tmp_path / "5").mkdir()
    with pytest.raises(DataError, match=r"5: unknown pain-level folder"):
        load_biovid(tmp_path, log=lambda _: None)


def test_a_misplaced_file_is_an_error(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    write(root / "072414_m_23" / "081609_w_40-PA1-077_bio.csv", sample_text(gsr_values(1, 0)))
    with pytest.raises(DataError, match="subject 081609_w_40 stored in the folder"):
        load_biovid(root, log=lambda _: None)
    level_root = tmp_path / "levels"
    write(level_root / "2" / "072414_m_23-PA3-001_bio.csv", sample_text(gsr_values(3, 0)))
    with pytest.raises(DataError, match="named as class PA3 but stored in the folder of class PA2"):
        load_biovid(level_root, log=lambda _: None)


def test_signals_of_wildly_different_lengths_are_an_error(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    short = root / "081609_w_40" / "081609_w_40-PA1-010_bio.csv"
    write(short, sample_text(gsr_values(1, 0)[:35]))  # 12.5 % shorter than the median 40
    with pytest.raises(DataError, match="35 valid gsr values.*median sample has 40") as error:
        load_biovid(root, log=lambda _: None)
    assert str(short) in str(error.value)
    write(short, sample_text(gsr_values(1, 0)[:37]))  # 7.5 % shorter: within the rule
    assert load_biovid(root, log=lambda _: None).signals.shape[1] == ROWS


def test_an_empty_folder_and_unknown_channels_are_errors(tmp_path):
    with pytest.raises(DataError, match="no sample files"):
        load_biovid(tmp_path, log=lambda _: None)
    with pytest.raises(DataError, match="does not exist"):
        load_biovid(tmp_path / "missing", log=lambda _: None)
    with pytest.raises(ValueError, match="channels must be distinct names"):
        load_biovid(tmp_path, channels=("eeg",))


# --- cache -----------------------------------------------------------------------------


def test_the_cache_is_read_back_and_refreshed_when_a_file_changes(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    messages: list[str] = []
    first = load_biovid(root, cache_dir=tmp_path / "cache", log=messages.append)
    cached = list((tmp_path / "cache").glob("biovid-*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("*.tmp.npz"))
    second = load_biovid(root, cache_dir=tmp_path / "cache", log=messages.append)
    assert "from the cache" in messages[-1]
    assert (
        second.fingerprint() == first.fingerprint()
        and second.names.tolist() == first.names.tolist()
    )
    assert second.subject_names == first.subject_names and second.channels == first.channels
    changed = root / "072414_m_23" / "072414_m_23-BL1-000_bio.csv"
    write(changed, sample_text(gsr_values(2, 5)))
    os.utime(changed, ns=(1, 1))
    third = load_biovid(root, cache_dir=tmp_path / "cache", log=messages.append)
    assert "from the cache" not in messages[-2] and third.fingerprint() != first.fingerprint()
    other_channels = load_biovid(
        root, channels=("ecg",), cache_dir=tmp_path / "cache", log=lambda _: None
    )
    assert other_channels.channels == ("ecg",)
    assert len(list((tmp_path / "cache").glob("biovid-*.npz"))) == 3


# --- tasks and level errors -------------------------------------------------------------


def test_binary_tasks_relabel_and_keep_ids(tmp_path):
    dataset = load_biovid(per_subject_tree(tmp_path / "data", per_class=2), log=lambda _: None)
    extreme = binary_task(dataset, "bl1_vs_pa4")
    assert extreme.class_names == ("BL1", "PA4") and len(extreme) == 8
    np.testing.assert_array_equal(extreme.labels, (dataset.labels[extreme.ids] == 4).astype(int))
    any_pain = binary_task(dataset, "bl1_vs_rest")
    assert len(any_pain) == len(dataset)
    np.testing.assert_array_equal(any_pain.labels, (dataset.labels > 0).astype(int))
    np.testing.assert_array_equal(any_pain.signals, dataset.signals)
    assert set(BINARY_TASKS) == {"bl1_vs_pa4", "bl1_vs_rest"}
    with pytest.raises(ValueError, match="unknown task"):
        binary_task(dataset, "pa1_vs_pa4")
    with pytest.raises(ValueError, match="five-class set"):
        binary_task(extreme, "bl1_vs_pa4")


def test_level_errors_match_a_direct_computation():
    labels = np.array([0, 1, 2, 3, 4, 4])
    predictions = np.array([0, 3, 2, 0, 4, 1])
    errors = level_errors(labels, predictions)
    assert errors["mae"] == pytest.approx((0 + 2 + 0 + 3 + 0 + 3) / 6)
    assert errors["rmse"] == pytest.approx(np.sqrt((4 + 9 + 9) / 6))
    with pytest.raises(ValueError, match="same"):
        level_errors(labels, predictions[:3])


def test_an_all_nan_channel_or_signals_too_short_to_smooth_are_errors(tmp_path):
    root = per_subject_tree(tmp_path / "data")
    empty = root / "081609_w_40" / "081609_w_40-PA2-020_bio.csv"
    write(empty, sample_text(np.full(ROWS, np.nan)))
    with pytest.raises(DataError, match="PA2-020_bio.csv: 0 valid gsr values"):
        load_biovid(root, log=lambda _: None)
    tiny = tmp_path / "tiny"
    for label in range(2):
        write(tiny / f"s-{('BL1', 'PA1')[label]}-00{label}_bio.csv", sample_text(np.ones(3)))
    with pytest.raises(DataError, match="3 valid gsr values, fewer than the smoothing window 5"):
        load_biovid(tiny, log=lambda _: None)
