"""The former home of the view, now the package `spacy_attrib.view`."""

from .view import DifferentiableView, EncodedBatch, ViewOutput

__all__ = ["DifferentiableView", "EncodedBatch", "ViewOutput"]
