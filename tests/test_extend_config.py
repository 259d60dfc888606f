"""Which differences an extension allows on resume, and the history it leaves in the config."""
import pytest

from ffcv_cram.config import UsageError
from ffcv_cram.train.extend import remaining_differences, with_history


def _cfg(epochs, history=None):
    cfg = {"training": {"epochs": epochs}, "cram": {"rho": 0.05}}
    return {**cfg, "extension": {"history": history}} if history else cfg


def test_more_epochs_and_the_history_are_no_difference_but_the_rest_is():
    saved = _cfg(3, [{"from_epochs": 2, "to_epochs": 3, "at_epoch": 2, "at_batch": 0}])
    assert remaining_differences(saved, _cfg(5), ["extension.history", "training.epochs"], "run") == []
    assert remaining_differences(saved, _cfg(5), ["cram.rho", "training.epochs"], "run") == ["cram.rho"]


def test_fewer_epochs_are_refused():
    with pytest.raises(UsageError, match=r"--training.epochs=4: run holds a run of 5 epochs, which "
                                         r"can be extended but not shortened; use "
                                         r"--training.epochs=5 or more"):
        remaining_differences(_cfg(5), _cfg(4), ["training.epochs"], "run")


def test_the_history_grows_by_each_extension_and_is_carried_by_plain_resumes():
    cfg, extension = with_history(_cfg(6), _cfg(3), 1, 4)  # interrupted in epoch 1, at batch 4
    assert extension == {"from_epochs": 3, "to_epochs": 6, "at_epoch": 1, "at_batch": 4}
    assert cfg["extension"]["history"] == [extension]
    again, none = with_history(_cfg(6), cfg, 2, 0)  # the extended run resumed as it is
    assert none is None and again["extension"] == cfg["extension"]
    more, second = with_history(_cfg(8), cfg, 6, 0)
    assert more["extension"]["history"] == [extension, second] and second["from_epochs"] == 6
    assert with_history(_cfg(3), None, 0, 0) == (_cfg(3), None)  # a fresh run
