from .calibration import CalibrationHandler
from .checkpoints import AtomicCheckpointSaver, last_checkpoint
from .divergence import DivergenceError, DivergenceGuard, nonfinite_tensors
from .evaluation_report import EvaluationReport
from .metrics_writer import MetricsJSONWriter, write_json_atomic
from .mlflow_tags import RunTracker, dataset_fingerprint, run_tags
from .overlays import OverlaySaver
from .run_state import (
    PruneStaleCheckpoints,
    TrainingRunState,
    check_before_training,
    check_resume,
    create_tracking_store,
)
from .stopping import HeldOutStopping
