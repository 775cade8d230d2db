from .anomaly_map import AnomalyMapGenerator, cosine_distance, nearest_distance, prior_gain
from .discriminator import FeatureDiscriminator
from .encoders import TEACHERS, FeatureEncoder, build_student, build_teacher, feature_channels
from .multiad import AnomalyOutput, DistillationFeatures, MultiAD
