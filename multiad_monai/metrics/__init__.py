from .epoch_metrics import ImageAUROC, ImageF1Max, PixelAUPRO, PixelAUROC
from .functional import aupro_of_curve, image_auroc, image_f1_max, pixel_aupro, pixel_auroc, pro_curve, pro_curve_until
from .maps import EvaluationMaps
