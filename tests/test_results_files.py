"""results.json: studies of other commands or settings in one workdir coexist, every
writer has a temporary file of its own, and a full disk is one line with no partial file."""

import errno
import json
import threading
from pathlib import Path

import pytest

from kdjax.runs import results as results_files
from kdjax.store.integrity import WorkdirError


def document(command: str, temperature: float) -> dict:
    return {
        "schema": results_files.SCHEMA,
        "command": command,
        "config": {"workdir": "anywhere", "temperature": temperature},
        "runs": {"student": {"test_accuracy": [0.9]}},
    }


def test_a_second_study_in_one_workdir_keeps_the_first(tmp_path, capsys):
    first = results_files.write_results(tmp_path, document("mnist_kd", 3.0))
    results_files.write_results(tmp_path, document("mnist_sweep", 4.0))
    assert json.loads(first.read_text())["command"] == "mnist_sweep"  # the newest
    index = json.loads((tmp_path / "studies" / "index.json").read_text())["studies"]
    assert sorted(entry["command"] for entry in index.values()) == ["mnist_kd", "mnist_sweep"]
    for entry in index.values():
        kept = json.loads((tmp_path / entry["file"]).read_text())
        assert kept["command"] == entry["command"] and kept["runs"]
    assert "stay in" in capsys.readouterr().out


def test_rerunning_the_same_study_replaces_its_file_without_a_note(tmp_path, capsys):
    results_files.write_results(tmp_path, document("mnist_kd", 3.0))
    # The workdir is where a study is kept, not what it is: the same study elsewhere.
    moved = document("mnist_kd", 3.0) | {"config": {"workdir": "other", "temperature": 3.0}}
    results_files.write_results(tmp_path, moved)
    assert len(list((tmp_path / "studies").glob("mnist_kd-*.json"))) == 1
    assert "stay in" not in capsys.readouterr().out


def test_results_written_before_study_files_existed_are_kept(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(document("hinton_mnist", 20.0)))
    results_files.write_results(tmp_path, document("mnist_kd", 3.0))
    kept = [
        json.loads(path.read_text())["command"] for path in (tmp_path / "studies").glob("*-*.json")
    ]
    assert sorted(kept) == ["hinton_mnist", "mnist_kd"]


def test_concurrent_writers_never_collide_and_a_reader_always_sees_valid_json(tmp_path):
    failures, stop = [], threading.Event()

    def write(temperature):
        try:
            for _ in range(60):
                results_files.write_results(tmp_path, document("mnist_kd", temperature))
        except Exception as error:  # noqa: BLE001 - every failure is the finding
            failures.append(error)

    def read():
        while not stop.is_set():
            try:
                json.loads((tmp_path / "results.json").read_text())
            except FileNotFoundError:
                continue
            except ValueError as error:
                failures.append(error)

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(t,)) for t in (1.0, 1.0, 2.0, 3.0)]
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert failures == []
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_full_disk_at_results_json_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    real_write_text = Path.write_text

    def full_disk(path, text, *args, **kwargs):
        if path.name.endswith(".tmp") and not path.name.startswith(".index"):
            real_write_text(path, text[:4096], *args, **kwargs)  # a partial write, then
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(WorkdirError, match="No space left on device") as error:
        results_files.write_results(tmp_path, document("mnist_kd", 3.0))
    assert "\n" not in str(error.value)
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "results.json").exists()
