"""MONAI Label app serving multiad-monai bundles (the `monailabel` extra: `pip install -e ".[monailabel]"`)."""

from multiad_monai.monailabel.app import MultiADApp
from multiad_monai.monailabel.infer import AnomalyInferTask
from multiad_monai.monailabel.models import BundleModel, load_inferer
from multiad_monai.monailabel.train import RetrainTask
from multiad_monai.monailabel.triage import AnomalyScoring, MostAnomalous
