"""A training step never waits for the GPU: none in a bf16 CrAM step with its bookkeeping and
augmentation, one (the overflow decision) in an fp16 CrAM step. On the CPU: the bookkeeping that
moved off the host-synchronising path still gives the same numbers."""
import warnings

import pytest
import torch
from torch.nn import functional as F

from ffcv_cram.data.augment import batch_generator, flip_translate
from ffcv_cram.models import get_model
from ffcv_cram.models.blurpool import BlurConv2d
from ffcv_cram.train.epoch_totals import EpochTotals
from ffcv_cram.train.optimizer_options import OptimizerOptions
from ffcv_cram.train.step import TrainStep, make_optimizer


def setup(device, amp, blurpool=False):
    torch.manual_seed(0)
    model = get_model("resnet20", 10, blurpool=blurpool).to(device, memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), OptimizerOptions(
        method="cram", lr=0.1, momentum=0.9, weight_decay=5e-4, sparsities=(0.5, 0.7, 0.9)))
    step = TrainStep(model, opt, "cram", amp, label_smoothing=0.1, device=device)
    x = torch.randn(16, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    return opt, step, x, torch.randint(0, 10, (16,), device=device)


def test_epoch_totals_match_the_per_step_host_arithmetic():
    opt, step, x, y = setup("cpu", "none")
    totals, expected, latest = EpochTotals(torch.device("cpu")), [0.0, 0.0, 0], None
    for i, n in enumerate((16, 16, 5, 1)):  # unequal batches: the loss is weighted by their sizes
        xb = flip_translate(x[:n], batch_generator(0, 0, i))
        out = step(xb, y[:n])
        totals.add(out.loss, out.correct, n)
        expected = [expected[0] + out.loss.double().item() * n, expected[1] + out.correct.item(),
                    expected[2] + n]
        totals.loss.post(out.loss)
        latest = totals.loss.read()
        assert latest == out.loss.item()  # on the CPU the progress bar shows this step's loss
    loss_sum, correct, samples = totals.result()
    assert samples == expected[2] == 38 and correct == expected[1]
    assert loss_sum == pytest.approx(expected[0], rel=1e-12)


def test_blur_kernel_built_on_the_device_is_the_binomial_kernel():
    conv = BlurConv2d(4, 4, 3, stride=2, padding=1, bias=False)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(2, 4, 9, 9).to(dtype)
        taps = torch.tensor([1.0, 2.0, 1.0], dtype=dtype)
        kernel = ((taps[:, None] * taps[None, :]) / 16).expand(4, 1, 3, 3)
        want = F.conv2d(x, kernel, padding=1, groups=4)  # zero padding, as ffcv-imagenet
        assert torch.equal(conv._blur(x), want)


@pytest.mark.cuda
def test_bf16_cram_step_with_its_bookkeeping_never_synchronises():
    device = torch.device("cuda")
    opt, step, x, y = setup(device, "bf16", blurpool=True)
    totals = EpochTotals(device)

    def one_step(i):
        out = step(flip_translate(x, batch_generator(0, 0, i)), y)
        totals.add(out.loss, out.correct, len(y))
        totals.loss.post(out.loss)
        totals.loss.read()
        assert out.skipped is False
    for i in range(2):  # warm-up: kernels compiled, device tables and pinned blocks cached
        one_step(i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(2, 6):
            one_step(i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert opt._fused  # the fused CrAM kernels ran
    loss_sum, correct, samples = totals.result()
    assert samples == 6 * 16 and 0 <= correct <= samples and loss_sum > 0


@pytest.mark.cuda
def test_fp16_cram_step_synchronises_once():
    opt, step, x, y = setup(torch.device("cuda"), "fp16")
    step(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(x, y)  # skipped or not (the scale may still be too high): one sync
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


@pytest.mark.cuda
def test_cifar_augmentation_on_the_gpu_equals_the_cpu_draws():
    x = torch.randn(9, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for batch in range(3):
        on_cpu = flip_translate(x, batch_generator(5, 2, batch))
        on_gpu = flip_translate(x.cuda(), batch_generator(5, 2, batch))
        assert torch.equal(on_gpu.cpu(), on_cpu)
