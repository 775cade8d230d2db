"""MONAI Label app folder: serve multiad-monai bundles.

    python -m monailabel.main start_server --app apps/multiad --studies STUDIES --conf models brain --host 127.0.0.1

See docs/monailabel.md; the app itself is ``multiad_monai.monailabel.MultiADApp``.
"""

from multiad_monai.monailabel import MultiADApp

__all__ = ["MultiADApp"]
