from .datasets import AnomalyData, cached_teacher_features, load_datasets, with_teacher_features
from .demo import build_brain_demo
from .layouts import (
    DatasetIndex,
    aspect_preserving_size,
    categories,
    dataset_fingerprint,
    default_prior_weight,
    detect_layout,
    index_dataset,
    require_dataset_dir,
)
