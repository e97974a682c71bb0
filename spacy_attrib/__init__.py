"""spacy-attrib: attribution methods for spaCy transformer pipelines, as pipeline components.

    nlp.add_pipe("attr_integrated_gradients")   # after a transformer and a head that listens to it
    doc = nlp("A warm, witty and wise film.")
    doc._.attributions["integrated_gradients"]["POS"].scores   # one float per spaCy token

Factories are registered through the ``spacy_factories`` entry point, so ``spacy.load`` finds them in a
saved pipeline without an import.
"""

from .embedding import SentenceEmbedding, set_vector_hooks  # registers the sentence_embedding factory
from .attribution import Attribution, Interaction, Segment, install_extensions, iter_attributions
from .pairs import make_pair, pair_segments
from .render import render, serve
from .targets import Target
from .view import DifferentiableView
from .methods.similarity import explain_similarities, explain_similarity

__version__ = "0.1.0"
__all__ = ["Attribution", "DifferentiableView", "Segment", "Target", "install_extensions", "iter_attributions", "make_pair",
           "pair_segments", "render", "serve", "Interaction", "explain_similarity", "explain_similarities",
           "SentenceEmbedding", "set_vector_hooks"]

install_extensions()
