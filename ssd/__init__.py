"""ssd: an educational, from-scratch SSD (Single Shot MultiBox Detector) in PyTorch.

Shape letters used in docstrings across the package:
    N  images in a batch            P  priors (default boxes) per image
    C  classes, background included G  ground-truth boxes of one image
    K  detections kept for one image S  side of the square network input (INPUT.IMAGE_SIZE)
    L  prior levels (feature maps)   A  priors per feature-map cell on a level
"""

__version__ = "0.1.0"
