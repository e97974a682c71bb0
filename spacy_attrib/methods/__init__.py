"""Attribution methods, one module per family; each method is a component on `AttributionComponent`."""

from .base import AttributionComponent
from .bottleneck import InformationBottleneck
from .gradient import GradientXInput, Saliency, SmoothGrad
from .integrated import IntegratedGradients
from .random import RandomAttribution

__all__ = ["AttributionComponent", "GradientXInput", "InformationBottleneck", "IntegratedGradients", "RandomAttribution", "Saliency", "SmoothGrad"]
