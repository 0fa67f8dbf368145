"""Registers the plugin's trainer folder with nnU-Net's external-trainer lookup.

nnU-Net 2.8 reads ``nnUNet_extTrainer`` (an ``os.pathsep``-separated list of folders) when a trainer
name is not one of its own. The installed ``nnunet_ccesemi.pth`` calls :func:`register_trainer_folder`
at interpreter start; the variable is read lazily and inherited by spawned workers, so every
``nnUNetv2_*`` process sees our trainers. Standard library only: this runs in every process.
"""
import os

ENV_VAR = "nnUNet_extTrainer"
TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nnunet_ext")


def register_trainer_folder(environ=os.environ) -> None:
    """Append our trainer folder to ``nnUNet_extTrainer``, keeping the user's own folders first."""
    entries = [e for e in environ.get(ENV_VAR, "").split(os.pathsep) if e]
    if TRAINER_FOLDER not in entries:
        environ[ENV_VAR] = os.pathsep.join(entries + [TRAINER_FOLDER])
