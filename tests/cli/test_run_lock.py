"""A run folder is owned by one process at a time, and Ctrl-C is one line with exit code 130 (issue 19).

Real processes, no timing races: the first `trm train` is held at a known point by the test hook of
trmcore.fileio (its first atomic write -- the run folder's marker, written under the lock -- waits),
the second one is started then, and the first is sent SIGINT afterwards. Before the fix both runs went
on (one result lost) and Ctrl-C printed a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import trmcore
from trmcore.fileio import LOCK_FILE, MARKER_FILE, TEMP_PREFIX, TEST_HOLD_ENV, FolderInUseError, folder_lock
from trmcore.fileio import prepare_output_folder, remove_output_folder, visible_entries

ENTRY = "import sys; from trmcore.cli.main import main; sys.exit(main())"
# Second commands on a folder another process owns (counted bad inputs): each stops at once with one line.
CONCURRENT_RUNS = ["trm train on a held -o", "trm finetune on a held -o", "trm train --resume on a held -o"]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(trmcore.__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _trm(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENTRY, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not path.exists():
        proc.kill()
        pytest.fail(f"the first process never reached the hold point: {proc.communicate(timeout=30)}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from trmcore.data import make_phantom

    return make_phantom(tmp_path_factory.mktemp("lock") / "data", n_cases=2, sites=1, size=(16, 16, 8), seed=0)


def test_second_run_on_a_held_folder_stops_and_ctrl_c_is_one_line(data, tmp_path):
    run, ready = tmp_path / "run", tmp_path / "ready"
    train = ["train", data, "--channel", "T1", "--labels", "CSF", "-o", run, "--iterations", "2", "--depth", "2",
             "--width", "4", "--device", "cpu", "-q"]
    first = _trm(*train, env=_env(**{TEST_HOLD_ENV: str(ready)}))
    try:
        _wait_for(ready, first)
        holder = int(ready.read_text().split()[0])
        assert holder == first.pid
        seconds = [["finetune", data, "--channel", "T1", "--labels", "CSF", "--source", tmp_path / "no-source",
                    "-o", run, "-q"], [*train, "--resume"], train]
        assert len(seconds) == len(CONCURRENT_RUNS)
        for second in seconds:
            out, err = _trm(*second, env=_env()).communicate(timeout=300)
            lines = err.strip().splitlines()
            assert lines == [f"trm {second[0]}: error: {run} is in use by another `trm` process (pid {holder}); "
                             "wait for it to end or choose another folder"], err
        assert first.poll() is None  # the owner is untouched by the refused runs
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert err.strip() == "trm train: interrupted" and "Traceback" not in err
    # The interrupted run had made the folder and written nothing into it yet: no partial file, no folder.
    assert not run.exists()


def test_the_lock_dies_with_its_process(tmp_path):
    """A killed owner (SIGKILL: no clean-up at all) never blocks the next run."""
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from trmcore.fileio import folder_lock
        with folder_lock({str(run)!r}, "train"):
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            with folder_lock(run, "train"):
                pass
        holder.kill()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert os.listdir(run) == [LOCK_FILE]  # stale: its process is gone, so is its lock
    with folder_lock(run, "train") as owned:
        assert owned == run and (run / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert os.listdir(run) == []  # the folder was made by the killed holder: kept, the lock file removed
    fresh = tmp_path / "fresh"
    with folder_lock(fresh, "train"):
        assert fresh.is_dir()
    assert not fresh.exists()  # made by this call, nothing written: removed again


def test_a_refused_run_leaves_a_foreign_folder_as_it_was(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "metrics.csv").write_text("mine\n")
    with folder_lock(folder, "train"):
        pass
    assert os.listdir(folder) == ["metrics.csv"]


def test_the_lock_file_is_no_output_entry(tmp_path):
    run = tmp_path / "run"
    with folder_lock(run, "train"):
        assert visible_entries(run) == []  # an empty run folder for `trm train`'s checks
        prepare_output_folder(run, "train", ["*"])
        (run / "model.safetensors").write_bytes(b"x")
        prepare_output_folder(run, "train", ["*"], overwrite=True)  # --overwrite removes only the command's own
        assert sorted(os.listdir(run)) == [LOCK_FILE, MARKER_FILE]
    assert os.listdir(run) == [MARKER_FILE]  # no lock file once released
    remove_output_folder(run, "train")
    assert not run.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
