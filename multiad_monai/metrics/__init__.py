from .epoch_metrics import ImageAUROC, ImageF1Max, PixelAUPRO, PixelAUROC
from .functional import image_auroc, image_f1_max, pixel_aupro, pixel_auroc, pro_curve
