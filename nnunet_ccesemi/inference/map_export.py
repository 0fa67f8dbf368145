"""Float maps (uncertainty) written in the geometry of the image nnU-Net read, whichever reader read it.

nnU-Net's writers cast to an integer label type, so they cannot write an uncertainty map. This module
does what they do with the geometry each reader keeps in the case properties, for a float volume:

- ``SimpleITKIO``: spacing, origin and direction (``sitk_stuff``);
- ``SimpleITKIOWithReorient``: the same, oriented back from RAS to ``original_orientation``;
- ``NibabelIO``: the original affine (``nibabel_stuff``), in nibabel's axis order;
- ``NibabelIOWithReorient``: the RAS affine, oriented back to the original axes;
- other readers (TIFF, natural images) keep only the spacing, so that is all the map gets.
"""
from __future__ import annotations

import nibabel
import numpy as np
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

NIBABEL_ENDINGS = (".nii.gz", ".nii")


def write_float_map(volume: np.ndarray, properties: dict, path: str) -> None:
    """Writes ``volume`` (one channel in nnU-Net's array order, the input's shape) to ``path`` with the
    geometry stored in ``properties`` by the reader that read the input."""
    volume = np.asarray(volume, dtype=np.float32)
    nibabel_stuff = properties.get("nibabel_stuff")
    if nibabel_stuff is not None:
        if not path.endswith(NIBABEL_ENDINGS):
            raise ValueError(f"{path}: a case read by nnU-Net's NibabelIO is written as NIfTI; "
                             f"expected one of the endings {NIBABEL_ENDINGS}")
        nibabel.save(_nibabel_image(volume, nibabel_stuff), path)
    else:
        sitk.WriteImage(_sitk_image(volume, properties), path, True)


def _nibabel_image(volume: np.ndarray, nibabel_stuff: dict) -> nibabel.Nifti1Image:
    data = volume.transpose(2, 1, 0)  # nnU-Net transposed nibabel's (x, y, z) to SimpleITK's order
    if "reoriented_affine" not in nibabel_stuff:
        return nibabel.Nifti1Image(data, nibabel_stuff["original_affine"])
    # NibabelIOWithReorient read it reoriented to RAS: orient it back, as its write_seg does
    image = nibabel.Nifti1Image(data, nibabel_stuff["reoriented_affine"])
    return image.as_reoriented(ornt_transform(axcodes2ornt("RAS"), io_orientation(nibabel_stuff["original_affine"])))


def _sitk_image(volume: np.ndarray, properties: dict) -> sitk.Image:
    itk = properties.get("sitk_stuff")
    if itk is None:
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing([float(s) for s in properties["spacing"][::-1]])
        return image
    image = sitk.GetImageFromArray(volume[0] if len(itk["spacing"]) == 2 else volume)  # 2D: (1, x, y)
    image.SetSpacing(itk["spacing"])
    image.SetOrigin(itk["origin"])
    image.SetDirection(itk["direction"])
    if "original_orientation" in itk:  # SimpleITKIOWithReorient read it reoriented to RAS
        image = sitk.DICOMOrient(image, itk["original_orientation"])
    return image
