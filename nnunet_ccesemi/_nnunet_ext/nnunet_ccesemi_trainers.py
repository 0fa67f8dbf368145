# nnU-Net imports every file of an nnUNet_extTrainer folder as a bare top-level module and then drops
# it from sys.modules. This shim re-exports the real (picklable) classes from the installed package.
from nnunet_ccesemi.trainers import *  # noqa: F401,F403
