"""Offline converters from raw public datasets to the BMAD folder layout read by ``multiad_monai.data``.

Every converter writes 8-bit grey PNGs::

    <out>/train/good/<name>.png                 normal training images / slices
    <out>/{valid,test}/good/img/<name>.png      normal
    <out>/{valid,test}/good/label/<name>.png    all-zero mask (datasets with masks only)
    <out>/{valid,test}/Ungood/img/<name>.png    anomalous
    <out>/{valid,test}/Ungood/label/<name>.png  binary 0/255 mask (datasets with masks only)

Slices of 3D volumes (BraTS, liver CT) follow the package's one slice convention,
:data:`multiad_monai.transforms.SLICE_AXCODES` (``"PLS"``) cut along :data:`multiad_monai.transforms.SLICE_AXIS`:
rows run anterior -> posterior, columns from the patient's right to left (radiological display) and slice
indices from inferior to superior, whatever the voxel order of the file. The package slices NIfTI input at
training and inference time with the same code, so a model sees a patient alike in PNGs and in volumes.

Modules (each runnable as ``python -m data_prep.<module> --help``):

- :mod:`data_prep.brats`: BraTS2021 volumes to brain slices.
- :mod:`data_prep.liver`: BTCV (normal training slices) and LiTS (valid/test slices) to liver slices.
- :mod:`data_prep.oct`: OCT2017 (Kermany) and RESC retinal OCT images.
- :mod:`data_prep.validate`: check a prepared folder and summarise it.
- :mod:`data_prep.common`: helpers shared by the converters.
"""
