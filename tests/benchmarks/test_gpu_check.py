"""benchmarks/gpu_check.py without a GPU: it says so and writes nothing; its MFU sum."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: run the check itself")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out and not out.exists()


def test_mfu_is_six_flops_per_parameter_and_token_over_the_peak():
    run = {"bare_train": {"samples_per_s": 1000.0}, "bare_train_mean_tokens": 20.0}
    # 6 * 22.7M params * 20 tokens * 1000 samples/s = 2.724 TFLOP/s of an H100's 989
    assert gpu_check.mfu(run, 22_700_000, 1, "NVIDIA H100 80GB HBM3") == pytest.approx(2.724 / 989, abs=1e-4)
    assert gpu_check.mfu(run, 22_700_000, 2, "NVIDIA H200") == pytest.approx(2.724 / 989 / 2, abs=1e-4)
    assert gpu_check.mfu(run, 22_700_000, 1, "Some Future GPU") is None
