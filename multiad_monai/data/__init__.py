from .datasets import AnomalyData, load_datasets
from .demo import build_brain_demo
from .layouts import detect_layout, index_dataset
