"""Output names never collide (issue 19): the whole plan of a command is checked before the first file.

Two cases named ``X`` and ``X_probabilities`` with ``--probabilities`` used to write one file twice
(``X_probabilities.nii.gz`` is X's probabilities and X_probabilities' labels): one overwrote the other
with --overwrite, a partial set was left without it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trmcore.cli.main import main
from trmcore.fileio import check_output_plan
from trmcore.infer.nifti_files import CaseFiles, plan_outputs

from .conftest import case_files

# Output plans that must be refused before anything is written (counted bad inputs).
COLLIDING_PLANS = [
    ("X", "X_probabilities"),      # X's probabilities = X_probabilities' labels
    ("a", "a_probabilities"),
]


def _two_cases(phantom: Path, folder: Path, names) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        for k, path in enumerate(case_files(phantom, "phantom_000")):
            shutil.copy(path, folder / f"{name}_{k:04d}.nii.gz")
    return folder


@pytest.mark.parametrize("names", COLLIDING_PLANS)
def test_plan_refuses_cases_whose_outputs_collide(tmp_path, names):
    cases = [CaseFiles(n, [tmp_path / "in" / f"{n}_0000.nii.gz"]) for n in names]
    (tmp_path / "in").mkdir()
    for case in cases:
        case.channel_paths[0].write_bytes(b"")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="outputs collide") as err:
            plan_outputs(cases, tmp_path / "in", tmp_path / "out", probabilities=True, overwrite=overwrite)
        message = str(err.value)
        assert f"case {names[0]!r}" in message and f"case {names[1]!r}" in message and "\n" not in message
    # Without probabilities the same cases are fine.
    assert len(plan_outputs(cases, tmp_path / "in", tmp_path / "out", probabilities=False, overwrite=False)) == 2


def test_predict_writes_nothing_when_outputs_would_collide(phantom, onnx_model, tmp_path, capsys):
    inputs = _two_cases(phantom, tmp_path / "in", ["X", "X_probabilities"])
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        code = main(["predict", "-m", str(onnx_model), "-i", str(inputs), "-o", str(out), "--probabilities",
                     "-q", *extra])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
        assert code == 2 and len(errors) == 1 and errors[0].startswith("trm predict: error: outputs collide")
        assert "'X'" in errors[0] and "'X_probabilities'" in errors[0]
        assert not out.exists() or not any(out.iterdir())


def test_check_output_plan_sees_through_dot_dot(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="outputs collide"):
        check_output_plan([(tmp_path / "a.json", "first"), (tmp_path / "sub" / ".." / "a.json", "second")],
                          overwrite=False)
