"""Shared fixtures: a clean nnU-Net environment and a tiny synthetic dataset, planned once per session."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
DATASET_ID = 777
CONFIG = "3d_cpu"
TINY_SPEC_KWARGS = dict(n_labeled=4, n_unlabeled=4, n_test=2, shape=(16, 32, 32), seed=1)


@pytest.fixture(autouse=True)
def no_user_nnunet_folders(monkeypatch):
    """A developer's own nnU-Net folders must not reach the in-process tests (a converter refuses an
    ID that its nnUNet_preprocessed already holds under another name)."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(variable, raising=False)


def clean_env(root: Path, **extra: str) -> dict:
    """What a new shell of a user has: PATH, HOME and nnU-Net's three folders; no nnUNet_extTrainer."""
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", str(root)),
        "LANG": "C.UTF-8",
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
        # two background augmenters per stream on a 2-core machine, as nnU-Net would pick
        "nnUNet_n_proc_DA": "2",
        # one export/evaluation worker after training: nnU-Net's default spawns 8, each importing torch,
        # which on 2 cores is half of a tiny training run's wall time
        "nnUNet_def_n_proc": "1",
        "OMP_NUM_THREADS": "2",
        # the plugin's trainers draw a fresh seed otherwise: thresholds asserted on a short run's results
        # (Dice, a term being non-zero) would hold or fail by the draw
        "nnUNet_ccesemi_seed": "1",
    }
    env.update(extra)
    return env


def nnunet_env(root: Path, **extra: str) -> dict:
    """:func:`clean_env` with nnU-Net's three folders created."""
    env = clean_env(root, **extra)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[variable])
    return env


def run_cli(args: list[str], env: dict, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    # the commands write UTF-8 (tqdm's bars, names with accents) whatever this process's locale is
    result = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, encoding="utf-8",
                            errors="replace", timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\nSTDOUT:\n{result.stdout[-4000:]}"
                             f"\nSTDERR:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    """Tiny synthetic dataset after plan_and_preprocess, unlabelled preprocessing and add_cpu_config."""
    from nnunet_ccesemi.data.synthetic import SyntheticSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    raw_folder = write_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, "Tiny", SyntheticSpec(**TINY_SPEC_KWARGS))
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1",
             "--verify_dataset_integrity"], env)
    run_cli(["nnUNetv2_ccesemi_preprocess_unlabeled", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1"], env)
    run_cli(["nnUNetv2_ccesemi_add_cpu_config", "-d", str(DATASET_ID), "--patch", "16", "16", "16", "--base-features", "8",
             "--max-features", "32"], env)
    return {"root": root, "env": env, "raw": Path(raw_folder),
            "preprocessed": Path(env["nnUNet_preprocessed"]) / f"Dataset{DATASET_ID:03d}_Tiny",
            "results": Path(env["nnUNet_results"]) / f"Dataset{DATASET_ID:03d}_Tiny"}


def copy_dataset(planned: dict, destination: Path) -> dict:
    """An independent copy of the planned dataset, for tests that damage it."""
    shutil.copytree(planned["root"], destination)
    env = clean_env(destination)
    return {**planned, "root": destination, "env": env,
            "raw": destination / "nnUNet_raw" / planned["raw"].name,
            "preprocessed": destination / "nnUNet_preprocessed" / planned["preprocessed"].name,
            "results": destination / "nnUNet_results" / planned["results"].name}


def trained_folder(planned: dict, trainer: str) -> Path:
    return planned["results"] / f"{trainer}__nnUNetPlans__{CONFIG}" / "fold_all"


@pytest.fixture(scope="session")
def trained_cce(planned_dataset):
    """nnUNetTrainerCCE_5epochs trained through the stock CLI (all terms on, incl. prototypes)."""
    result = run_cli(["nnUNetv2_train", str(DATASET_ID), CONFIG, "all", "-tr", "nnUNetTrainerCCE_5epochs",
                      "-device", "cpu"], planned_dataset["env"])
    return planned_dataset, result


class _SerialPool:
    """Stands in for nnU-Net's spawned worker pool: the same checks, run in this process."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def starmap(self, function, arguments):
        return [function(*a) for a in arguments]


def verify_in_process(folder: Path, monkeypatch) -> None:
    """nnU-Net's ``verify_dataset_integrity`` (what ``--verify_dataset_integrity`` runs) without
    spawning a worker, which would import torch again (seconds on a busy 2-core machine)."""
    from nnunetv2.experiment_planning import verify_dataset_integrity as module
    monkeypatch.setattr(module.multiprocessing, "get_context",
                        lambda *args: argparse.Namespace(Pool=_SerialPool))
    module.verify_dataset_integrity(os.fspath(folder), num_processes=1)
