"""``python -m spacy_attrib``: the ``spacy-attrib`` command line."""

from .cli import main

main()
