"""Installs nnunet_ccesemi and makes its trainers visible to nnU-Net's stock CLI.

nnU-Net 2.8 finds trainers outside its own package only through the folders named in
``nnUNet_extTrainer``. We ship a one-line ``.pth`` file that adds the plugin's trainer folder to that
variable at interpreter start, so ``nnUNetv2_train ... -tr nnUNetTrainerCPS`` works right after
``pip install .`` or ``pip install -e .`` with nothing to export. ``build_py`` puts the file in regular
wheels; the ``editable_wheel`` hook puts it in editable ones.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
PTH_NAME = "nnunet_ccesemi.pth"
# Must stay one line and must never raise: site.py runs it in every Python process of the environment.
PTH_LINE = (
    'import sys; exec("try:\\n import nnunet_ccesemi._discovery as d; d.register_trainer_folder()\\n'
    'except Exception:\\n pass")\n'
)


def read_version() -> str:
    for line in (HERE / "nnunet_ccesemi" / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("nnunet_ccesemi/__init__.py defines no __version__")


class BuildPyWithPth(build_py):
    def run(self):
        # setuptools never cleans build/lib: a module renamed or removed since the last build would ship
        # again, and nnU-Net imports every module of _nnunet_ext when it looks for a trainer
        shutil.rmtree(Path(self.build_lib) / "nnunet_ccesemi", ignore_errors=True)
        super().run()
        target = Path(self.build_lib) / PTH_NAME
        target.write_text(PTH_LINE)


class EditableWheelWithPth(editable_wheel):
    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        (Path(installation_dir) / PTH_NAME).write_text(PTH_LINE)


setup(
    name="nnunet_ccesemi",
    version=read_version(),
    description="Semi-supervised 3D segmentation for nnU-Net v2: dual networks, cross pseudo supervision, "
                "entropy filtering, KL weighting and voxel-prototype contrast (CCE, arXiv 2509.13084)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[
        "nnunet_ccesemi",
        "nnunet_ccesemi.losses",
        "nnunet_ccesemi.data",
        "nnunet_ccesemi.training",
        "nnunet_ccesemi.cli",
        "nnunet_ccesemi.evaluation",
        "nnunet_ccesemi.inference",
        "nnunet_ccesemi._nnunet_ext",
        "nnunet_ccesemi.trainers",
        "nnunet_ccesemi.dataset_conversion",
    ],
    package_dir={
        "nnunet_ccesemi.trainers": "trainers",
        "nnunet_ccesemi.dataset_conversion": "dataset_conversion",
    },
    package_data={"nnunet_ccesemi.dataset_conversion": ["splits/*.list"]},
    # The tested set, pinned (install.sh installs torch and torchvision first, from this pair).
    install_requires=[
        "nnunetv2==2.8.1",
        "torch==2.14.1",
        "batchgenerators==0.25.5",  # imported directly (the loaders nnU-Net 2.8 uses)
        "batchgeneratorsv2==0.3.6",  # nnU-Net's transforms
        "dynamic-network-architectures==0.4.4",
        "acvl-utils==0.2.6",
        "numpy==2.4.6",
        "SimpleITK==2.5.7",
        "nibabel==5.4.2",  # uncertainty maps of NIfTI cases read by nnU-Net's NibabelIO
        "h5py==3.16.0",  # the Left Atrium .h5 files
        "scipy==1.17.1",  # surface distances of the evaluator
        "tifffile==2026.3.3",  # TIFF segmentations in the evaluator
        "matplotlib==3.11.2",  # progress_ssl.png
        "tqdm==4.70.1",
    ],
    extras_require={"test": ["pytest==9.2.0", "hypothesis==6.170.17", "medpy==0.5.2"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_ccesemi_preprocess_unlabeled = nnunet_ccesemi.cli.preprocess_unlabeled:main",
            "nnUNetv2_ccesemi_add_cpu_config = nnunet_ccesemi.cli.add_cpu_config:main",
            "nnUNetv2_ccesemi_demo = nnunet_ccesemi.cli.demo:main",
            "nnUNetv2_ccesemi_convert_LA = nnunet_ccesemi.dataset_conversion.convert_LA:main",
            "nnUNetv2_ccesemi_convert_pancreas = nnunet_ccesemi.dataset_conversion.convert_pancreas:main",
            "nnUNetv2_ccesemi_convert_brats19 = nnunet_ccesemi.dataset_conversion.convert_brats19:main",
            "nnUNetv2_ccesemi_convert_folder = nnunet_ccesemi.dataset_conversion.convert_folder:main",
            "nnUNetv2_ccesemi_evaluate = nnunet_ccesemi.cli.evaluate:main",
            "nnUNetv2_ccesemi_predict = nnunet_ccesemi.cli.predict:main",
            "nnUNetv2_ccesemi_estimate_memory = nnunet_ccesemi.cli.estimate_memory:main",
            "nnUNetv2_ccesemi_check_dataset = nnunet_ccesemi.cli.check_dataset:main",
            "nnUNetv2_ccesemi_rank_unlabeled = nnunet_ccesemi.cli.rank_unlabeled:main",
        ]
    },
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
)
