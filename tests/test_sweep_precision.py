"""The sweep's precision is chosen with --eval.amp: auto is bf16 autocast on CUDA, float32 on the
CPU; bf16 and none force either."""
import pytest
import torch

from ffcv_cram.sweep.precision import eval_amp_dtype


@pytest.mark.parametrize("amp,device,dtype", [
    ("auto", "cuda", torch.bfloat16), ("auto", "cpu", None), ("none", "cuda", None),
    ("bf16", "cpu", torch.bfloat16), ("bf16", "cuda", torch.bfloat16)])
def test_eval_amp_picks_the_autocast_dtype(amp, device, dtype):
    assert eval_amp_dtype(amp, torch.device(device)) is dtype


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="amp='fp16': must be one of auto, bf16, none"):
        eval_amp_dtype("fp16", "cpu")
