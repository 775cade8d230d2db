"""Offline converters from raw public datasets to the BMAD folder layout read by ``multiad_monai.data``.

Every converter writes 8-bit grey PNGs::

    <out>/train/good/<name>.png                 normal training images / slices
    <out>/{valid,test}/good/img/<name>.png      normal
    <out>/{valid,test}/good/label/<name>.png    all-zero mask (datasets with masks only)
    <out>/{valid,test}/Ungood/img/<name>.png    anomalous
    <out>/{valid,test}/Ungood/label/<name>.png  binary 0/255 mask (datasets with masks only)

Modules (each runnable as ``python -m data_prep.<module> --help``):

- :mod:`data_prep.brats`: BraTS2021 volumes to brain slices.
- :mod:`data_prep.liver`: BTCV (normal training slices) and LiTS (valid/test slices) to liver slices.
- :mod:`data_prep.oct`: OCT2017 (Kermany) and RESC retinal OCT images.
- :mod:`data_prep.validate`: check a prepared folder and summarise it.
- :mod:`data_prep.common`: helpers shared by the converters.
"""
