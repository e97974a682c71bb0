"""spacy-attrib: attribution methods for spaCy transformer pipelines, as pipeline components.

    nlp.add_pipe("attr_integrated_gradients")   # after a transformer and a head that listens to it
    doc = nlp("A warm, witty and wise film.")
    doc._.attributions["integrated_gradients"]["POS"].scores   # one float per spaCy token

Factories are registered through the ``spacy_factories`` entry point, so ``spacy.load`` finds them in a
saved pipeline without an import.
"""

from .attribution import Attribution, install_extensions
from .view import DifferentiableView
from .targets import Target

__version__ = "0.1.0"
__all__ = ["Attribution", "DifferentiableView", "Target", "install_extensions"]

install_extensions()
