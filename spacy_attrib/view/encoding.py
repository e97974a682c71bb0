"""Docs tokenized into wordpiece rows exactly as the pipeline's transformer tokenizes them.

The transformer's own span getter, Hugging Face tokenizer call, alignment and truncation are re-used, so
the view sees the rows (and `token_type_ids`) the pipeline's forward pass sees. A sentence pair made with
`spacy_attrib.make_pair` is one Doc whose text holds the tokenizer's separator: it is encoded like any doc,
as the pipeline encodes it.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy
import torch
from spacy.tokens import Doc
from spacy_transformers.align import get_alignment, get_alignment_via_offset_mapping
from spacy_transformers.data_classes import FullTransformerBatch, TransformerData, WordpieceBatch
from spacy_transformers.layers.transformer_model import huggingface_tokenize
from spacy_transformers.pipeline_component import Transformer
from spacy_transformers.truncate import truncate_oversize_splits
from transformers.file_utils import ModelOutput

from ..align import WordpieceLayout


@dataclass
class EncodedBatch:
    """Docs tokenized into wordpiece rows the way the pipeline's transformer tokenizes them.

    A doc covers ``rows[i]`` consecutive rows (one per span from the span getter; long docs have several
    overlapping windows, empty docs none). ``doc_data[i]`` carries the doc's wordpieces and its alignment
    from spaCy tokens to positions in the doc's rows flattened (row-major, padded length ``T``). `plan` is
    what the head fixed from the docs themselves before any perturbed pass (the parser's predicted
    transitions, spancat's suggested spans); None for heads that need none.
    """

    docs: List[Doc]
    input_ids: torch.Tensor  # (n_rows, T)
    attention_mask: torch.Tensor  # (n_rows, T)
    token_type_ids: Optional[torch.Tensor]  # (n_rows, T)
    doc_data: List[TransformerData]
    row_starts: List[int]
    rows: List[int]
    plan: Any = None
    _orth_sums: Optional[Dict[int, int]] = field(default=None, repr=False, compare=False)

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def row_index(self, doc_indices: Sequence[int]) -> torch.Tensor:
        """Indices of the rows of each doc in `doc_indices`, concatenated: how to lay out instances."""
        index = [r for i in doc_indices for r in range(self.row_starts[i], self.row_starts[i] + self.rows[i])]
        return torch.tensor(index, dtype=torch.long, device=self.input_ids.device)

    def orth_sums(self) -> Dict[int, int]:
        """Each doc's sum of token orths by ``id(doc)``, computed once: what spacy-transformers' listeners
        identify a batch of docs by, which every pass through the head would otherwise recount."""
        if self._orth_sums is None:
            self._orth_sums = {id(doc): sum(token.orth for token in doc) for doc in self.docs}
        return self._orth_sums

    def layout(self, d: int) -> WordpieceLayout:
        """Doc `d`'s real wordpieces and its token → wordpiece alignment over them."""
        start, n = self.row_starts[d], self.rows[d]
        mask = self.attention_mask[start:start + n].cpu().numpy()
        data = self.doc_data[d]
        return WordpieceLayout.from_rows(data.wordpieces.strings, mask, data.align)


def encode(transformer: Transformer, docs: Sequence[Doc], device: torch.device) -> EncodedBatch:
    """Tokenize `docs` with the transformer's span getter, tokenizer and alignment."""
    docs = list(docs)
    model = transformer.model
    nested_spans = model.attrs["get_spans"](docs)
    flat_spans = [span for doc_spans in nested_spans for span in doc_spans]
    if not flat_spans:
        empty = torch.zeros((0, 0), dtype=torch.long, device=device)
        return EncodedBatch(docs, empty, empty, None, [TransformerData.empty() for _ in docs],
                            [0] * len(docs), [0] * len(docs))
    tokenizer = model.tokenizer
    encoding = huggingface_tokenize(tokenizer, [span.text for span in flat_spans])
    wordpieces = WordpieceBatch.from_batch_encoding(encoding)
    if "offset_mapping" in encoding:
        align = get_alignment_via_offset_mapping(flat_spans, encoding["offset_mapping"])
    else:
        align = get_alignment(flat_spans, wordpieces.strings, tokenizer.all_special_tokens)
    wordpieces, align = truncate_oversize_splits(wordpieces, align, tokenizer.model_max_length)
    # A zero-width placeholder output lets spacy-transformers split wordpieces and alignment per doc.
    placeholder = ModelOutput(last_hidden_state=torch.zeros((len(flat_spans), 0)))
    full = FullTransformerBatch(spans=nested_spans, wordpieces=wordpieces, model_output=placeholder, align=align)
    rows = [len(doc_spans) for doc_spans in nested_spans]
    starts = numpy.concatenate([[0], numpy.cumsum(rows)[:-1]]).astype(int).tolist()

    def as_tensor(array) -> torch.Tensor:
        return torch.as_tensor(numpy.asarray(array), dtype=torch.long, device=device)

    token_types = None if wordpieces.token_type_ids is None else as_tensor(wordpieces.token_type_ids)
    return EncodedBatch(docs, as_tensor(wordpieces.input_ids), as_tensor(wordpieces.attention_mask),
                        token_types, full.split_by_doc(), starts, rows)
