from .datasets import AnomalyData, cached_teacher_features, load_datasets, with_teacher_features
from .demo import build_brain_demo
from .layouts import (
    aspect_preserving_size,
    categories,
    default_prior_weight,
    detect_layout,
    index_dataset,
    require_dataset_dir,
)
