"""trm riskmap on a LAS-stored copy: maps on the input's own grid and header, equal to the RAS maps flipped."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from trmcore.cli.main import main


def _las_copy(phantom, dst, case):
    shutil.copytree(phantom, dst, ignore=shutil.ignore_patterns("*.png"))
    for path in list((dst / "imagesTr").glob(f"{case}_*.nii.gz")) + [dst / "labelsTr" / f"{case}.nii.gz"]:
        image = nib.load(str(path))
        transform = ornt.ornt_transform(ornt.io_orientation(image.affine), ornt.axcodes2ornt("LAS"))
        data = ornt.apply_orientation(np.asarray(image.dataobj), transform)
        affine = image.affine @ ornt.inv_ornt_aff(transform, image.shape)
        out = nib.Nifti1Image(data, affine)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=2)
        nib.save(out, str(path))
    return transform


def test_riskmap_writes_maps_on_the_stored_grid(phantom, source_run, tmp_path):
    case = "phantom_001"
    transform = _las_copy(phantom, tmp_path / "las", case)
    for name, data in (("ras", phantom), ("las", tmp_path / "las")):
        assert main(["riskmap", str(data), "--channel", "T2", "--labels", "CSF", "--source", str(source_run),
                     "-o", str(tmp_path / f"maps-{name}"), "--cases", case, "-q"]) == 0
    ras = nib.load(str(tmp_path / "maps-ras" / f"{case}_risk.nii.gz"))
    las = nib.load(str(tmp_path / "maps-las" / f"{case}_risk.nii.gz"))
    source = nib.load(str(tmp_path / "las" / "imagesTr" / f"{case}_0001.nii.gz"))
    np.testing.assert_array_equal(las.affine, source.affine)
    assert las.header["sform_code"] == 2 and las.header["qform_code"] == 1
    assert nib.aff2axcodes(las.affine) == ("L", "A", "S")
    np.testing.assert_allclose(np.asarray(las.dataobj), ornt.apply_orientation(np.asarray(ras.dataobj), transform),
                               atol=1e-5)
    assert float(np.asarray(las.dataobj).max()) > 1.0  # the maps hold values (R in [1, 10])
