from .anomaly_map import AnomalyMapGenerator, cosine_distance
from .discriminator import FeatureDiscriminator
from .encoders import TEACHERS, FeatureEncoder, build_student, build_teacher, feature_channels
from .multiad import AnomalyOutput, DistillationFeatures, MultiAD
from .normalizer import ScoreNormalizer, normalize_to_threshold, prior_gain
from .prior import TeacherPrior, nearest_distance
