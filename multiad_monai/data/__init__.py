from .datasets import AnomalyData, intensity_transform, load_datasets
from .demo import build_brain_demo
from .layouts import categories, detect_layout, index_dataset, require_dataset_dir
