"""bench/cram_cost_study.py: the smoke study end to end (real conversions with a hold-out, real
trainings with resident data, the real eval_sparse.py), its archive handling and bad inputs."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import imagefiles as files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import cram_cost_study as study  # noqa: E402
from ffcv_cram.optim.cram_schedule import is_full_step  # noqa: E402

def run_study(*argv, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "cram_cost_study.py"), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_smoke_study_writes_json_table_and_plot(tmp_path):
    proc = run_study("--smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "cram_cost_study_smoke_cpu.json").read_text())
    names = list(study.SETTINGS)
    assert [row["setting"] for row in result["summary"]] == names
    # generated data: 4 classes x 50, the last 10 of each held out -> 160 images, 5 steps of 32
    steps = 5
    expected_full = {"sgd": 0, "cram+": 5, "interval 4": 2, "fraction 0.25": 5,
                     "last half": 3,  # steps 2, 3, 4 (start_epoch 0.5 -> step 2)
                     "late ramp": sum(is_full_step(t, 4, 1, 4) for t in range(steps))}
    for run in result["runs"]:
        assert run["full_steps"] == expected_full[run["setting"]], run
        assert set(run["bnt_top1"]) == {"0.8", "0.9", "0.95", "2:4"} and run["train_s"] > 0
    assert sorted((r["setting"], r["seed"]) for r in result["runs"]) == sorted(
        (n, s) for n in names for s in (0, 1))
    sgd = result["summary"][0]
    assert sgd["cost_ratio"] == [1.0, 0.0] and len(sgd["seeds"]) == 2
    assert set(result["decision"]) >= {"answer", "meets_target", "cram_plus_gain_at_90"}
    table = (tmp_path / "out" / "cram_cost_study_smoke_cpu.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows] == ["setting", *names] and "Answer: " in table
    png = (tmp_path / "out" / "cram_cost_study_smoke_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the hold-out: 10 per class, disjoint from the 160 training images (test_holdout: by pixels)
    from ffcv.reader import Reader
    work = tmp_path / "work"
    assert len(Reader(str(work / "val.beton")).metadata) == 40
    assert len(Reader(str(work / "train.beton")).metadata) == 160
    again = run_study("--smoke", "--work", str(work), "--out", str(tmp_path / "out"))
    assert again.returncode == 0 and "seed 0:" in again.stdout  # finished rounds are reused
    assert json.loads((tmp_path / "out" / "cram_cost_study_smoke_cpu.json").read_text())[
        "runs"] == result["runs"]


def test_archive_is_extracted_once_to_its_class_tree(tmp_path):
    tree = tmp_path / "cifar10-train-jpeg" / "train"
    files.class_tree(tree, classes=2, per_class=2, sizes=((8, 8),))
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar10-train-jpeg", arcname="cifar10-train-jpeg")
    work = tmp_path / "work"
    work.mkdir()
    found = study.extract(archive, work)
    assert found == work / "extracted" / "cifar10-train-jpeg" / "train"
    assert sorted(p.name for p in found.rglob("*.jpg")) == sorted(p.name for p in tree.rglob("*.jpg"))
    assert study.extract(archive, work) == found and not (work / ".extracted.tmp").exists()


@pytest.mark.parametrize("argv,message", [
    ([], "error: --archive or --data-dir is required"),
    (["--archive", "missing.tar.gz"], "error: missing.tar.gz: no such file; pass the CIFAR-10"),
    (["--data-dir", "missing"], "error: missing: no such directory"),
    (["--smoke", "--settings", "sgd,cram+,fast"], "error: --settings: unknown setting 'fast'"),
    (["--smoke", "--settings", "sgd"], "error: --settings: must include sgd and cram+"),
    (["--smoke", "--seeds", "a"], "error: --seeds=a: expected comma-separated integers"),
])
def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tmp_path, argv, message):
    proc = run_study(*argv, "--work", str(tmp_path / "work"))
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "work").exists()


def test_unreadable_archive_is_one_line_and_leaves_no_extraction(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"not an archive")
    proc = run_study("--archive", str(archive), "--work", str(tmp_path / "work"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {archive}: cannot be read as a .tar.gz archive")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == []


def test_summary_cost_gain_and_decision():
    from cost_study_report import decision, summarise, table_markdown

    def run(name, seed, train_s, at_90):
        return {"setting": name, "seed": seed, "train_s": train_s, "full_steps": 1,
                "dense_top1": 90.0, "bnt_top1": {"0.8": 80.0, "0.9": at_90, "0.95": 50.0,
                                                 "2:4": 85.0}}
    runs = [run("sgd", 0, 10, 30), run("sgd", 1, 12, 32), run("cram+", 0, 20, 60),
            run("cram+", 1, 24, 62), run("late", 0, 14, 57), run("late", 1, 18, 59),
            run("cheap", 0, 11, 40), run("cheap", 1, 12, 42)]
    rows = summarise(runs, ["sgd", "cram+", "late", "cheap"])
    late = rows[2]
    assert late["cost_ratio"][0] == pytest.approx(1.45)  # per seed: 14 / 10 and 18 / 12
    assert late["cost_ratio"][1] == pytest.approx(0.0707107, rel=1e-5)
    assert late["gain_kept_at_90"] == pytest.approx(27 / 30)  # (58 - 31) / (61 - 31)
    assert rows[3]["gain_kept_at_90"] == pytest.approx(10 / 30)
    verdict = decision(rows)
    assert verdict["meets_target"] == ["late"] and verdict["answer"] == "yes: late"
    assert verdict["cram_plus_gain_at_90"] == pytest.approx(30)
    assert "| late | 2 | 1.45 ± 0.07 | 90.0 ± 0.0 | 80.0 ± 0.0 | 58.0 ± 1.4 |" in table_markdown(
        rows, verdict)


@pytest.mark.slow
def test_resident_throughput_benchmark_runs_both_paths(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_resident.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "BENCH_RESULTS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_resident_cpu.json").read_text())
    assert set(result["results"]) == {"train", "loader only"}
    for by_path in result["results"].values():
        assert set(by_path) == {"resident", "FFCV loader"}
        assert all(r["images_per_s"] > 0 and len(r["rounds"]) == 1 for r in by_path.values())
