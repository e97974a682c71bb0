"""Attribution methods, one module per family; each method is a component on `AttributionComponent`."""

from .base import AttributionComponent
from .gradient import GradientXInput, Saliency, SmoothGrad
from .integrated import IntegratedGradients

__all__ = ["AttributionComponent", "GradientXInput", "IntegratedGradients", "Saliency", "SmoothGrad"]
