"""`make demo` end to end, then its model exported (slow: about a quarter of an hour on 2 CPU
cores; `make test-all`)."""
import json

import pytest

from d2_edwpose.tools import cpu_demo, export_model


@pytest.mark.slow
def test_cpu_demo_reaches_keypoint_ap_50(tmp_path, monkeypatch, restore_synthetic_registration):
    monkeypatch.setenv("D2_EDWPOSE_SYNTHETIC_ROOT", str(tmp_path / "synthetic"))
    summary = cpu_demo.main(["--output-dir", str(tmp_path / "demo")])
    assert summary["keypoint_AP"] >= 50, summary
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary
    assert (tmp_path / "demo" / "training_loss.png").stat().st_size > 0
    assert len(list((tmp_path / "demo" / "predictions").glob("*.png"))) == 8

    # The demo-trained model exported to ONNX and TorchScript: the same people as PyTorch on
    # every val image, boxes and keypoints within 1 px, scores within 1e-3 (raises otherwise).
    written = export_model.main(
        ["--config-file", str(cpu_demo.DEMO_CONFIG), "--output", str(tmp_path / "export"),
         "--verify", str(tmp_path / "synthetic" / "val"),
         "MODEL.WEIGHTS", str(tmp_path / "demo" / "model_final.pth")]
    )  # fmt: skip
    assert sorted(written) == ["onnx", "torchscript"]
