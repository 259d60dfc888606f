"""--training.init_weights: a run that starts from given weights instead of a random
initialisation, e.g. CrAM fine-tuning of a dense model.

Every format eval_sparse reads is accepted (`models.checkpoints`: torchvision state_dicts, our
final_weights.pt and checkpoints, the reference's `model_state_dict`, DDP `module.` prefixes),
loaded with weights_only unless the user trusts the file. The weights must fit the model exactly;
only a run's start reads them: a resumed run continues from its own checkpoint.
"""
from __future__ import annotations

from torch import nn

from ..config import UsageError
from ..safe_load import UnsafeFile
from ..models.checkpoints import CheckpointError, check_fits, load_checkpoint

TRUST_OPTION = "--training.trust_init_weights=1"


def start_from(model: nn.Module, path: str, model_cfg: dict, trusted: bool = False) -> None:
    """Copy the weights in `path` into `model` (in place), or raise UsageError saying why not."""
    option = f"--training.init_weights={path}"
    try:
        checkpoint = load_checkpoint(path, trusted)
        if checkpoint.blurpool and not model_cfg["blurpool"]:
            raise UsageError(f"{option}: trained with BlurPool (ffcv-imagenet's key names); start "
                             "from it with --model.blurpool=1")
        check_fits(model, checkpoint.state, path, model_cfg["arch"])
    except CheckpointError as err:
        raise UsageError(f"--training.init_weights: {err}") from None
    except UnsafeFile as err:
        raise UsageError(err.explain(TRUST_OPTION)) from None
    model.load_state_dict(checkpoint.state)
