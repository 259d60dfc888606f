"""--training.init_weights: every format eval_sparse reads starts a model with exactly its weights;
a file that does not fit or is not safe to read is refused with one line."""
import fractions

import pytest
import torch
import torchvision

from ffcv_cram.config import UsageError
from ffcv_cram.models import get_model
from ffcv_cram.train.init_weights import start_from

RESNET20 = {"arch": "resnet20", "blurpool": False}


def _weights(seed=1):
    torch.manual_seed(seed)
    return get_model("resnet20", 4).state_dict()


@pytest.mark.parametrize("layout", ["ours", "ddp", "reference", "our_checkpoint"])
def test_each_format_starts_the_model_from_its_weights(tmp_path, layout):
    weights = _weights()
    ddp = {f"module.{k}": v for k, v in weights.items()}
    saved = {"ours": weights, "ddp": ddp,
             "reference": {"epoch": 200, "model_state_dict": ddp, "optimizer": {}},
             "our_checkpoint": {"format": "ffcv_cram.checkpoint/1", "model": weights,
                                "config": {"model": {"arch": "resnet20"}}}}[layout]
    torch.save(saved, tmp_path / "w.pt")
    model = get_model("resnet20", 4)
    start_from(model, str(tmp_path / "w.pt"), RESNET20)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_a_torchvision_state_dict_starts_a_torchvision_model(tmp_path):
    theirs = torchvision.models.resnet18(num_classes=10)
    torch.save(theirs.state_dict(), tmp_path / "resnet18.pth")
    ours = get_model("resnet18", 10)
    start_from(ours, str(tmp_path / "resnet18.pth"), {"arch": "resnet18", "blurpool": False})
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())


def test_other_shapes_are_refused_naming_the_first_key_and_both_shapes(tmp_path):
    torch.save(get_model("resnet20", 10).state_dict(), tmp_path / "ten.pt")
    with pytest.raises(UsageError) as refused:
        start_from(get_model("resnet20", 4), str(tmp_path / "ten.pt"), RESNET20)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"--training.init_weights: {tmp_path}/ten.pt")
    assert ("2 with other shapes (first: fc.weight, (10, 64) in the file, (4, 64) in the "
            "model)") in message and "--model.num_classes" in message


def test_a_file_that_needs_full_unpickling_is_refused_unless_trusted(tmp_path):
    weights = _weights()
    torch.save({"model": weights, "stats": fractions.Fraction(1, 3)}, tmp_path / "w.pt")
    with pytest.raises(UsageError, match=r"refused: loading it needs full unpickling .* re-run "
                                         r"with --training.trust_init_weights=1"):
        start_from(get_model("resnet20", 4), str(tmp_path / "w.pt"), RESNET20)
    model = get_model("resnet20", 4)
    start_from(model, str(tmp_path / "w.pt"), RESNET20, trusted=True)
    assert torch.equal(model.state_dict()["fc.weight"], weights["fc.weight"])
