"""A pipeline's transformer as a sentence encoder, with no thinc head: the pooled sentence vector e(x).

    e(x) = Σ_p m_p h_p / Σ_p m_p

over every real wordpiece p (attention mask m_p = 1, [CLS] and [SEP] included) of the last hidden states h,
which is sentence-transformers' mean pooling. A long doc that the span getter splits into several windows
is pooled over the real wordpieces of all its windows (a wordpiece seen in two overlapping windows counts
twice): one mean over everything the transformer computed for the doc, so that a one-window doc is
exactly sentence-transformers' embedding.

`EmbeddingView` runs the Hugging Face module from values at an attribution site (`transformer`), like
`DifferentiableView` does for a head, so that integrated Jacobians (`spacy_attrib.methods.similarity`)
can differentiate e with respect to a layer's hidden states, in forward mode as well as backward.
"""

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from spacy.language import Language
from spacy.tokens import Doc
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import guards
from .encoding import EncodedBatch, encode
from .transformer import AttributionSite, TransformerAccess, TransformerRun, encoder_layers


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, owners: torch.Tensor, n_docs: int) -> torch.Tensor:
    """Each doc's mean of `hidden` (rows, T, H) over the real wordpieces of all its rows; `owners` (rows,)
    says which doc each row belongs to. A doc with no rows gets the zero vector."""
    weight = attention_mask.to(hidden.dtype).unsqueeze(-1)
    # A one-hot sum rather than index_add: forward-mode autograd runs through a matrix product.
    membership = torch.nn.functional.one_hot(owners, n_docs).T.to(hidden.dtype)
    sums = membership @ (hidden * weight).sum(1)
    counts = membership @ weight.sum((1, 2))
    return sums / counts.clamp(min=1).unsqueeze(-1)


class EmbeddingView(TransformerAccess):
    """The transformer of `nlp` as the function from the values at `attribute_at` to each doc's mean-pooled
    sentence vector (see the module docstring). `attribute_at` is a site of `spacy_attrib.view.transformer`:
    an integer k is the hidden states after encoder layer k, the input of layer k + 1."""

    def __init__(self, nlp: Language, attribute_at: AttributionSite):
        from . import find_transformer  # the facade module imports this one

        guards.register_fork_guard()
        self.transformer_name, self.transformer = find_transformer(nlp)
        self.run = TransformerRun(self.hf_model, attribute_at, torch.float32, self.tokenizer.padding_side)

    @property
    def depth(self) -> int:
        return len(encoder_layers(self.hf_model))

    def encode(self, docs: Sequence[Doc]) -> EncodedBatch:
        """Tokenize `docs` as the pipeline's transformer does."""
        return encode(self.transformer, docs, self.device)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Eval mode and parameters out of autograd, restored on exit (see `guards.transformer_frozen`)."""
        with guards.transformer_frozen(self.hf_model):
            yield

    @contextmanager
    def forward_mode(self) -> Iterator[None]:
        """Attention by the math kernel inside the block: the fused CPU and flash kernels of
        ``scaled_dot_product_attention`` have no forward-mode derivative, the math kernel's ops do."""
        with sdpa_kernel(SDPBackend.MATH):
            yield

    def pad_reference_ids(self, batch: EncodedBatch) -> torch.Tensor:
        """The reference text of every row: its special tokens kept ([CLS], [SEP]), every other real wordpiece
        [PAD], the same length (Moeller et al.'s reference; the attention mask stays on, so the reference's
        [PAD]s are attended like words)."""
        tokenizer = self.tokenizer
        if tokenizer.pad_token_id is None:
            raise ValueError(f"The tokenizer of {self.transformer_name!r} has no pad token for the reference")
        ids = batch.input_ids.clone()
        keep = torch.isin(ids, torch.tensor(self.structural_ids(), dtype=ids.dtype, device=ids.device))
        ids[batch.attention_mask.bool() & ~keep] = tokenizer.pad_token_id
        return ids

    def capture(self, batch: EncodedBatch, input_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The values at the site for `input_ids` (default: the batch's own), every row, without grad."""
        ids = batch.input_ids if input_ids is None else input_ids
        with self.frozen():
            return self.run.capture(self.run.inputs(batch, ids, None))

    def embed(self, batch: EncodedBatch, inputs: torch.Tensor, doc_index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The sentence vectors (instances, hidden) of instances of the batch's docs (`doc_index`, default each
        doc once; instance rows as in `EncodedBatch.row_index`) from `inputs` at the site, one per instance
        row. Differentiable w.r.t. `inputs`, in backward and (inside `forward_mode()`) forward mode."""
        doc_index = list(range(len(batch.docs))) if doc_index is None else list(doc_index)
        rows = batch.row_index(doc_index)
        owners = torch.repeat_interleave(torch.arange(len(doc_index), device=rows.device),
                                         torch.tensor([batch.rows[d] for d in doc_index], device=rows.device))
        with self.frozen():
            _, hidden = self.run.run(batch, rows, batch.input_ids[rows], inputs, None)
        return mean_pool(hidden, batch.attention_mask[rows], owners, len(doc_index))


__all__ = ["EmbeddingView", "mean_pool"]
