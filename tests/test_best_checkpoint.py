"""best.pt follows the highest validation top-1 (the earliest on ties), across a resume too."""
from ffcv_cram.train.best import BestCheckpoint


def _epochs(best, top1s):
    return [best.improved({"epoch": e, "val_top1": t}) for e, t in enumerate(top1s)]


def test_only_a_strictly_better_epoch_becomes_the_best(tmp_path):
    best = BestCheckpoint(str(tmp_path), True, None)
    assert _epochs(best, [20.0, 30.0, 25.0, 30.0, 31.0]) == [True, True, False, False, True]
    assert best.record == {"epoch": 4, "val_top1": 31.0}
    assert not best.improved({"epoch": 5})  # an epoch without validation


def test_a_resumed_run_compares_with_the_saved_best_while_its_file_is_there(tmp_path):
    saved = {"epoch": 3, "val_top1": 50.0}
    assert BestCheckpoint(str(tmp_path), True, saved).record is None  # best.pt was deleted
    (tmp_path / "best.pt").write_bytes(b"a checkpoint")
    best = BestCheckpoint(str(tmp_path), True, saved)
    assert _epochs(best, [40.0, 50.0, 60.0]) == [False, False, True]


def test_disabled_it_keeps_nothing(tmp_path):
    best = BestCheckpoint(str(tmp_path), False, {"epoch": 0, "val_top1": 1.0})
    assert best.record is None and _epochs(best, [10.0, 20.0]) == [False, False]
