"""disable_running_stats / enable_running_stats on every BatchNorm variant."""
import pytest
import torch
from torch import nn

from ffcv_cram import disable_running_stats, enable_running_stats


def buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("bn,shape", [(nn.BatchNorm1d(4), (8, 4)), (nn.BatchNorm1d(4), (8, 4, 5)),
                                      (nn.BatchNorm2d(4), (8, 4, 3, 3)),
                                      (nn.BatchNorm3d(4), (8, 4, 2, 2, 2)),
                                      (nn.BatchNorm2d(4, momentum=None), (8, 4, 3, 3))])
def test_frozen_pass_changes_no_buffer(bn, shape):
    model = nn.Sequential(bn).train()
    model(torch.randn(shape))  # buffers are not at their initial values any more
    before = buffers(model)
    disable_running_stats(model)
    disable_running_stats(model)  # twice: still restores the original setting
    out = model(torch.randn(shape))
    for k, v in buffers(model).items():
        assert torch.equal(v, before[k]), k
    # still normalising with batch statistics, as in training
    assert out.transpose(0, 1).reshape(4, -1).mean(1).abs().max() < 1e-5
    enable_running_stats(model)
    assert bn.track_running_stats
    model(torch.randn(shape))
    after = buffers(model)
    assert not torch.equal(after[next(k for k in after if "running_mean" in k)], before["0.running_mean"])
    assert int(after["0.num_batches_tracked"]) == int(before["0.num_batches_tracked"]) + 1


def test_layers_without_running_stats_keep_their_setting():
    model = nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False), nn.BatchNorm2d(3))
    disable_running_stats(model)
    enable_running_stats(model)
    assert model[0].track_running_stats is False and model[1].track_running_stats is True


def test_sync_batchnorm_buffers_untouched_without_process_group():
    model = nn.SyncBatchNorm(4).train()
    before = buffers(model)
    disable_running_stats(model)
    try:
        model(torch.randn(8, 4, 3, 3))
    except (ValueError, RuntimeError) as err:  # some builds refuse SyncBatchNorm on CPU
        pytest.skip(f"SyncBatchNorm forward unavailable here: {err}")
    for k, v in buffers(model).items():
        assert torch.equal(v, before[k])
