"""trm riskmap checks its whole output plan against its inputs before computing anything (issue 19).

With ``-o`` inside the dataset, case ``q``'s map ``q_risk.nii.gz`` is the label file of case ``q_risk``:
with --overwrite it used to be replaced by a risk map.
"""

from __future__ import annotations

import hashlib
import shutil

from trmcore.cli.main import main

# Plans refused (counted bad inputs): an output on a label file of the dataset.
RISKMAP_BAD_PLANS = ["-o DATA/labelsTr with cases q and q_risk"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_riskmap_never_writes_over_a_label_file(phantom, source_run, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom, data, ignore=shutil.ignore_patterns("*.png"))
    for old, new in (("phantom_000", "q"), ("phantom_001", "q_risk")):
        for path in list((data / "imagesTr").glob(f"{old}_*.nii.gz")) + [data / "labelsTr" / f"{old}.nii.gz"]:
            path.rename(path.with_name(path.name.replace(old, new)))
    label = data / "labelsTr" / "q_risk.nii.gz"
    before = _digest(label)
    code = main(["riskmap", str(data), "--channel", "T1", "--labels", "CSF", "--source", str(source_run),
                 "-o", str(data / "labelsTr"), "--cases", "q,q_risk", "--overwrite", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "q_risk.nii.gz" in err and "input" in err and len(err.splitlines()) == 1
    assert _digest(label) == before
    assert not list((data / "labelsTr").glob("*_transferability*")) and not list((data / "labelsTr").glob("*.png"))
