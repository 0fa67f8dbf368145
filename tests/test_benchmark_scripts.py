"""benchmarks/la_protocol.sh continues an interrupted protocol instead of starting it again, and
benchmarks/epoch_table.py reads the per-term statistics of a resumed run's logs.

The nnU-Net CLIs it calls are replaced by stubs on PATH that log their arguments, write the checkpoint a
finished training leaves and copy the reference labels as predictions; la_eval.py and the checkpoint
probe run for real.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
TRAINER = "nnUNetTrainerCCE_20epochs"

STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
"""
TRAIN_STUB = STUB + """fold="$nnUNet_results/Dataset601_Tiny/$5__nnUNetPlans__$2/fold_all"
mkdir -p "$fold"
"$STUB_PYTHON" -c "import sys, torch; torch.save({'network_b_weights': {}}, sys.argv[1])" "$fold/checkpoint_final.pth"
"""
PREDICT_STUB = STUB + """while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
mkdir -p "$out" && cp "$nnUNet_raw"/Dataset601_Tiny/labelsTs/*.nii.gz "$out"/
"""


def _setup(tmp_path):
    raw = tmp_path / "raw" / "Dataset601_Tiny"
    for sub in ("imagesTs", "labelsTs"):
        (raw / sub).mkdir(parents=True)
    label = np.zeros((6, 6, 6), np.uint8)
    label[2:4, 2:5, 1:4] = 1
    sitk.WriteImage(sitk.GetImageFromArray(label), str(raw / "labelsTs" / "c1.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(label.astype(np.float32)), str(raw / "imagesTs" / "c1_0000.nii.gz"))
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("nnUNetv2_train", TRAIN_STUB), ("nnUNetv2_predict", PREDICT_STUB),
                       ("nnUNetv2_ccesemi_predict", PREDICT_STUB)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    python_dir = Path(sys.executable).parent  # la_protocol.sh calls `python`: make it this interpreter
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "results"), STUB_LOG=str(tmp_path / "calls.log"),
               STUB_PYTHON=sys.executable, PATH=f"{stubs}:{python_dir}:{os.environ['PATH']}")
    env.pop("FRESH", None)
    return env, tmp_path / "results" / "Dataset601_Tiny"


def _run(env, tmp_path):
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "la_protocol.sh"), "601", "3d_cpu", TRAINER],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def _rows(results):
    return (results / "protocol_results.txt").read_text().splitlines()


def test_a_finished_trainer_is_not_trained_again_nor_its_rows_repeated(tmp_path):
    env, results = _setup(tmp_path)
    calls = _run(env, tmp_path)
    assert [c.split()[0] for c in calls] == ["nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_ccesemi_predict"]
    assert "--c" not in calls[0].split() and "--continue_prediction" not in calls[1].split()
    rows = _rows(results)
    assert [r.split(" (")[0] for r in rows] == [f"{TRAINER} A", f"{TRAINER} A+B"]
    assert all("Dice 100.00" in r for r in rows)

    calls = _run(env, tmp_path)
    assert [c.split()[0] for c in calls] == ["nnUNetv2_predict", "nnUNetv2_ccesemi_predict"]
    assert all("--continue_prediction" in c.split() for c in calls)
    assert _rows(results) == rows


def test_an_interrupted_training_resumes_from_its_latest_checkpoint(tmp_path):
    env, results = _setup(tmp_path)
    fold = results / f"{TRAINER}__nnUNetPlans__3d_cpu" / "fold_all"
    fold.mkdir(parents=True)
    torch.save({}, fold / "checkpoint_latest.pth")
    calls = _run(env, tmp_path)
    assert calls[0].split()[0] == "nnUNetv2_train" and "--c" in calls[0].split()
    assert "resumed part" in _rows(results)[0]


def test_fresh_retrains_a_finished_trainer(tmp_path):
    env, results = _setup(tmp_path)
    _run(env, tmp_path)
    calls = _run(dict(env, FRESH="1"), tmp_path)
    assert calls[0].split()[0] == "nnUNetv2_train" and "--c" not in calls[0].split()
    assert "--continue_prediction" not in calls[1].split()
    assert len(_rows(results)) == 4  # the retrained model's rows are added


def _log(path, epochs, day):
    lines = []
    for epoch, statistics, dice, seconds in epochs:
        lines += [f"2026-12-{day:02d} 10:00:00.000000: Epoch {epoch}",
                  f"2026-12-{day:02d} 10:00:00.000001: Current learning rate: 0.01"]
        if statistics is not None:
            lines += [f"2026-12-{day:02d} 10:02:00.000000: semi-supervised: {statistics}",
                      f"2026-12-{day:02d} 10:02:01.000000: Pseudo dice [np.float32({dice})]",
                      f"2026-12-{day:02d} 10:02:01.000001: Epoch time: {seconds} s"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_epoch_table_reads_a_resumed_run_in_time_order_and_marks_missing_statistics(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import epoch_table
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    # nnU-Net's names: the 10th of the month sorts before the 9th
    first = _log(tmp_path / "training_log_2026_12_9_10_00_00.txt",
                 [(0, "contrast_a 0.9, cps_a 0.25", 0.61, 170.5), (1, "contrast_a 0.5, cps_a 0.2", 0.7, 171.0),
                  (2, "contrast_a 0.3, cps_a 0.2", 0.7, 171.0), (3, None, None, None)], day=9)  # killed in epoch 3
    second = _log(tmp_path / "training_log_2026_12_10_10_00_00.txt",  # resumed from the epoch-1 checkpoint
                  [(1, "contrast_a 0.4, cps_a 1e-05", 0.75, 180.25), (2, "contrast_a 0, cps_a 0.1", 0.8, 175.0)],
                  day=10)
    epochs = epoch_table.read_epochs(sorted([first, second]))
    assert epochs == {0: {"contrast_a": 0.9, "cps_a": 0.25, "pseudo_dice": 0.61, "epoch_s": 170.5},
                      1: {"contrast_a": 0.4, "cps_a": 1e-05, "pseudo_dice": 0.75, "epoch_s": 180.25},
                      2: {"contrast_a": 0.0, "cps_a": 0.1, "pseudo_dice": 0.8, "epoch_s": 175.0}}
    table = epoch_table.format_table(epochs, ["cps_a", "reliable_fraction_c1"]).splitlines()
    assert table[0].split() == ["epoch", "cps_a", "reliable_fraction_c1"]
    assert table[2].split() == ["1", "1e-05", "-"]

    (tmp_path / "garbled.txt").write_text("2026-12-04 10:00:00.0: Epoch 0\n"
                                          "2026-12-04 10:02:00.0: semi-supervised: cps_a 0.25, contrast_a\n")
    (tmp_path / "empty.txt").touch()
    for bad, message in ((tmp_path / "none.txt", "cannot read the training log"),
                         (tmp_path / "empty.txt", "expected nnU-Net training logs"),
                         (tmp_path / "garbled.txt", "expected 'name value' items")):
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "epoch_table.py"), str(bad)],
                              capture_output=True, text=True)
        assert done.returncode != 0 and message in done.stderr and bad.name in done.stderr
        assert "Traceback" not in done.stderr


def _load_benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_peak_trace_replays_allocations_to_the_peak_and_finds_the_extra_blocks():
    trace_tool = _load_benchmark("memory_peak_trace")
    own = [{"filename": "/site/nnunet_ccesemi/losses/prototypes.py", "line": 7, "name": "class_prototypes"}]
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": own},
        {"action": "alloc", "addr": 2, "size": 50, "frames": []},
        # freed for the allocator's statistic when requested, though a second stream still uses it
        {"action": "free_requested", "addr": 1, "size": 100, "frames": []},
        {"action": "alloc", "addr": 3, "size": 60, "frames": []},
        {"action": "free_completed", "addr": 1, "size": 100, "frames": []},
        {"action": "alloc", "addr": 4, "size": 200, "frames": []},  # 310 live: the peak
        {"action": "free_requested", "addr": 9, "size": 999, "frames": []},  # allocated before the recording
        {"action": "free_requested", "addr": 4, "size": 200, "frames": []},
        {"action": "alloc", "addr": 5, "size": 150, "frames": []},  # 260: below the peak
    ]
    peak, index, blocks = trace_tool.peak_blocks(trace)
    assert (peak, index) == (310, 5)
    assert [b["size"] for b in blocks] == [200, 60, 50]
    # counting block 1 until its free completes would give 100 + 50 + 60 + 95 = 305 here
    early_peak = trace[:4] + [{"action": "alloc", "addr": 6, "size": 95, "frames": []}]
    assert trace_tool.peak_blocks(early_peak)[:2] == (205, 4)
    dispatch = {"filename": "/repo/nnunet_ccesemi/training/memory_estimate.py", "line": 96, "name": "__torch_dispatch__"}
    assert trace_tool.where({"frames": [dispatch] + own}) == "prototypes.py:7 class_prototypes"
    assert trace_tool.where({"frames": [dispatch]}) == "(backward: no Python frame)"

    # matched by size and allocating code: the 60-byte block from the project's code is the extra one
    forward = [{"size": 60, "index": 1, "frames": own}, {"size": 60, "index": 2, "frames": []}]
    reference = [{"size": 60, "frames": []}]
    assert [b["index"] for b in trace_tool.extra_blocks(reference, forward)] == [1]
    # of equal blocks, the later one is the extra one
    twice = [{"size": 60, "index": 1, "frames": own}, {"size": 60, "index": 2, "frames": own}]
    assert [b["index"] for b in trace_tool.extra_blocks([{"size": 60, "frames": own}], twice)] == [2]
