"""Converters from public semi-supervised benchmarks to nnU-Net raw datasets.

One module per dataset (``convert_LA``, ...) with a ``main(argv=None)`` console entry point, and
``common`` with what they share: split lists, the ``DatasetXXX_Name`` folder written through a
temporary folder and moved into place only when complete, image checks that name the offending
file, a progress bar over worker processes, and a ``dataset.json`` that records the split, the
source and the command line. Each writes ``imagesTr``/``labelsTr`` (labelled), ``imagesUnlabeled``
(unlabelled, same channel naming and file ending as ``imagesTr``) and ``imagesTs``/``labelsTs``
(test). The shipped split lists live in ``splits/``.

This subpackage imports nnU-Net's conversion helpers only, never the plugin's training code.
"""
