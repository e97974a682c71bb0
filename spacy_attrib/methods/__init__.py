"""Attribution methods, one module per family; each method is a component on `AttributionComponent`."""

from .base import AttributionComponent
from .gradient import GradientXInput, Saliency, SmoothGrad
from .integrated import IntegratedGradients
from .random import RandomAttribution
from .relevance import LayerwiseRelevance

__all__ = ["AttributionComponent", "GradientXInput", "IntegratedGradients", "LayerwiseRelevance", "RandomAttribution", "Saliency", "SmoothGrad"]
