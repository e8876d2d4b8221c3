"""`make demo` end to end (slow: about a quarter of an hour on 2 CPU cores; `make test-all`)."""
import json

import pytest

from d2_edwpose.tools import cpu_demo


@pytest.mark.slow
def test_cpu_demo_reaches_keypoint_ap_50(tmp_path, monkeypatch, restore_synthetic_registration):
    monkeypatch.setenv("D2_EDWPOSE_SYNTHETIC_ROOT", str(tmp_path / "synthetic"))
    summary = cpu_demo.main(["--output-dir", str(tmp_path / "demo")])
    assert summary["keypoint_AP"] >= 50, summary
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary
    assert (tmp_path / "demo" / "training_loss.png").stat().st_size > 0
    assert len(list((tmp_path / "demo" / "predictions").glob("*.png"))) == 8
