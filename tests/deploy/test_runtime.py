"""Execution-provider choice: CUDA with HEURISTIC conv search when a GPU is there, else CPU."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from trmcore.infer import runtime


def test_auto_picks_cuda_with_heuristic_search_when_available(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    chosen = runtime.requested_providers("auto")
    assert chosen[0] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    assert chosen[-1] == "CPUExecutionProvider"


def test_auto_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert runtime.requested_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        runtime.requested_providers("cuda")
    with pytest.raises(ValueError, match="not available"):
        runtime.requested_providers(["TensorrtExecutionProvider"])
    with pytest.raises(ValueError, match="providers must be"):
        runtime.requested_providers("tpu")


def test_session_reports_provider_and_threads(onnx_model):
    from trmcore.infer import Segmenter

    segmenter = Segmenter(onnx_model, providers="auto", threads=1)
    assert segmenter.provider in ort.get_available_providers()
    assert "Segmenter(" in repr(segmenter)
    with pytest.raises(ValueError, match="threads"):
        Segmenter(onnx_model, threads=0)
    with pytest.raises(ValueError, match="batch_size"):
        Segmenter(onnx_model, batch_size=0)
