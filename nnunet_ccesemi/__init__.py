"""Semi-supervised 3D medical image segmentation for nnU-Net v2 (dual networks, CPS and CCE).

Kept import-light: a ``.pth`` hook imports :mod:`nnunet_ccesemi._discovery` in every Python process.
"""
import os as _os

__version__ = "0.2.0"

# The repository's top-level trainers/ and dataset_conversion/ are installed as subpackages of this
# one. When Python imports this package from a source checkout instead (a command run from the
# repository root puts it first on sys.path), make those folders importable under the same names.
_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "trainers"))
        and _os.path.isfile(_os.path.join(_checkout, "trainers", "__init__.py"))
        and _os.path.isfile(_os.path.join(_checkout, "setup.py"))):
    __path__.append(_checkout)  # noqa: F821 (the package's module search path)
