"""The information bottleneck attribution (IBA, Jiang et al. 2020): component, bottleneck maths, statistics."""

from .bottleneck import bottleneck, capacity
from .component import InformationBottleneck, default_layer, make_information_bottleneck
from .statistics import BottleneckStatistics

__all__ = ["BottleneckStatistics", "InformationBottleneck", "bottleneck", "capacity", "default_layer",
           "make_information_bottleneck"]
