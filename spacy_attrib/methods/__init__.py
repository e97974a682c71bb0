"""Attribution methods, one module per family; each method is a component on `AttributionComponent`."""

from .attention import AttentionRollout, LayerwiseAttentionTracing, RawAttention
from .base import AttributionComponent
from .bottleneck import InformationBottleneck
from .gradient import GradientXInput, Saliency, SmoothGrad
from .integrated import IntegratedGradients
from .lafa import LocallyAggregatedAttribution
from .marginalization import InputMarginalization
from .perturbation import KernelShapAttribution, LimeAttribution, Occlusion, ShapleySampling
from .random import RandomAttribution
from .relevance import LayerwiseRelevance

__all__ = ["AttentionRollout", "AttributionComponent", "GradientXInput", "InformationBottleneck", "IntegratedGradients",
           "InputMarginalization", "KernelShapAttribution", "LayerwiseAttentionTracing", "LayerwiseRelevance", "LimeAttribution",
           "Occlusion", "RandomAttribution", "RawAttention", "Saliency", "ShapleySampling", "SmoothGrad"]
__all__ += ["LocallyAggregatedAttribution"]
from .masks.diffmask import DiffMask  # noqa: E402
from .trainable import TrainableAttributionComponent  # noqa: E402

__all__ += ["DiffMask", "TrainableAttributionComponent"]
from .masks.vmask_component import VariationalWordMask  # noqa: E402  (after the families it builds on)
__all__ += ["VariationalWordMask"]
