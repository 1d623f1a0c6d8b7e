"""trm export: an ONNX graph with dynamic shapes, embedded metadata, verified against torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from trmcore.cli.main import main
from trmcore.infer import METADATA_KEY, ModelMetadata, Segmenter

from .conftest import CHANNELS, DIVISOR, LABEL_NAMES, LABEL_VALUES


def test_graph_is_dynamic_and_opset_is_recent(onnx_model):
    proto = onnx.load(str(onnx_model))
    opset = {entry.domain: entry.version for entry in proto.opset_import}[""]
    assert opset >= 17
    (image,) = proto.graph.input
    (logits,) = proto.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", len(CHANNELS), "height", "width"]
    out_dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim]
    assert out_dims == ["batch", len(LABEL_NAMES), "height", "width"]


def test_metadata_is_embedded(onnx_model):
    props = {p.key: p.value for p in onnx.load(str(onnx_model)).metadata_props}
    record = json.loads(props[METADATA_KEY])
    assert record["channels"] == CHANNELS
    assert record["label_names"] == LABEL_NAMES and record["label_values"] == LABEL_VALUES
    assert record["normalization"] == "zscore-foreground"
    assert record["orientation"] == "RAS" and len(record["spacing"]) == 3 and record["schema_version"] == 5
    assert record["mirror_axes"] is None and props["mirror_axes"] == "not recorded"  # the fixture records none
    assert record["axis"] == 2 and record["divisor"] == DIVISOR
    assert record["provenance"]["method"] == "trm"
    assert record["provenance"]["source_model"] == "phantom-source"
    assert record["provenance"]["trmcore_version"]
    assert "dynamo=True" in record["provenance"]["exporter"]
    # readable copies for people inspecting the file
    assert props["channels"] == "T1,T2"
    assert props["labels"] == "background=0,CSF=10,GM=150"
    assert props["slice_axis"] == "2" and props["size_divisor"] == str(DIVISOR)
    assert props["orientation"] == "RAS" and props["normalization"] == "zscore-foreground"
    assert ModelMetadata.from_props(props).channels == CHANNELS


def test_onnx_matches_torch_on_odd_shapes(run_dir, onnx_model):
    import torch

    from trmcore.training.checkpoint import load_run

    model, _ = load_run(run_dir)
    segmenter = Segmenter(onnx_model, providers="cpu")
    x = torch.randn(5, 2, 7 * DIVISOR, 3 * DIVISOR, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(x).numpy()
    got = segmenter.slice_logits(x.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_cli_export_fp16_prints_difference_and_refuses_overwrite(run_with_data, tmp_path, capsys):
    run_dir = run_with_data
    out = tmp_path / "half.onnx"
    assert main(["export", str(run_dir), "-o", str(out), "--fp16"]) == 0
    printed = capsys.readouterr().out
    assert "max |logit difference|" in printed and "fp16" in printed and "Dice" in printed
    segmenter = Segmenter(out, providers="cpu")
    assert segmenter.metadata.dtype == "float16"
    x = np.random.default_rng(0).normal(size=(2, 2, 2 * DIVISOR, 2 * DIVISOR)).astype(np.float32)
    assert segmenter.slice_logits(x).dtype == np.float32
    before = out.read_bytes()
    assert main(["export", str(run_dir), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_verification_catches_a_wrong_graph(run_dir, onnx_model, tmp_path, monkeypatch):
    """A graph whose weights differ from torch's must fail verification and write nothing."""
    import onnx.numpy_helper as nh

    from trmcore.export import ExportVerificationError, export_run, onnx_export

    proto = onnx.load(str(onnx_model))
    del proto.metadata_props[:]
    for init in proto.graph.initializer:
        if init.name.startswith("head") and init.name.endswith("bias"):
            init.CopyFrom(nh.from_array(nh.to_array(init) + 0.5, init.name))
            break
    else:
        pytest.fail("no head bias initializer in the exported graph")
    monkeypatch.setattr(onnx_export, "_export_proto", lambda network, example, opset: (proto, "patched"))
    out = tmp_path / "wrong.onnx"
    with pytest.raises(ExportVerificationError, match="differ from torch"):
        export_run(run_dir, out)
    assert not out.exists()


def test_export_rejects_bad_arguments(run_dir, tmp_path):
    from trmcore.export import export_run

    with pytest.raises(ValueError, match="opset"):
        export_run(run_dir, tmp_path / "m.onnx", opset=13)
    with pytest.raises(ValueError, match=".onnx"):
        export_run(run_dir, tmp_path / "m.bin")
    with pytest.raises(FileNotFoundError, match="run"):
        export_run(tmp_path / "no-such-run", tmp_path / "m.onnx")
