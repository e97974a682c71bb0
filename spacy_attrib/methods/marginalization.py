"""Input marginalization (Kim et al. 2020, "Interpretation of NLP models through input marginalization",
EMNLP): a spaCy token's attribution is the weight of evidence the prediction loses when the token is not
erased but *marginalised out* under a masked language model,

    a_i = log_b odds p(y | x) − log_b odds p(y | x₋ᵢ),      odds(p) = p / (1 − p),   b = `log_base` (2)
    p(y | x₋ᵢ) = Σ_{x̃ ∈ C_i} w(x̃) p(y | x with token i := x̃),   w(x̃) = p_mlm(x̃ | x₋ᵢ) / Σ_{C_i} p_mlm

(Eq. 1 and 2 of the paper). Positive means the token supports the target. Probabilities are clipped to
[1e-7, 1 − 1e-7] before the odds, so a saturated head gives a finite score.

The candidate set C_i (truncated marginalisation, §3.2):
- ``top_n`` unset (default): adaptive truncation, the candidates whose likelihood exceeds ``sigma`` (1e-5,
  the paper's choice); ``top_n = n``: the n most likely (Pham et al. 2021 use 10);
- at most ``max_candidates`` (100) of them, the most likely: the cost is one classifier pass per candidate;
- the original token always (Algorithm 1 loops over the whole vocabulary, the original included), and the
  kept likelihood mass renormalised to 1.
Special tokens other than [UNK] are never candidates ([MASK] would leak the masked LM's input into the
classifier, [CLS]/[SEP]/[PAD] are not text).

A spaCy token of k wordpieces is marginalised as a whole by the chain rule (§3.3),
p(x̃¹…x̃ᵏ | x₋ᵢ) = Πⱼ p(x̃ʲ | x̃¹…x̃ʲ⁻¹, x₋ᵢ): all k pieces are masked, the candidates of the first piece are
drawn, each fills it and the masked LM runs again for the next, left to right: a beam of candidate
sequences kept by joint likelihood, truncated at each step as above (σ then applies to the joint
likelihood) with the original prefix always kept. A token in two overlapping windows of a long doc is read
by the masked LM in the window where it has most context (its pieces farthest from the window's edges; the
first such window on a tie), and each candidate is put in every window that holds the token, so the
classifier sees one consistent doc.

Cost: per token, one masked-LM pass per beam entry and piece, and one classifier pass per candidate. Both
are batched over all tokens of all docs of a batch, in chunks of `internal_batch_size` rows; the masked
LM's vocabulary projection runs only at the masked position (the full (rows, T, |V|) logits would not fit).

The masked LM (`mlm`: a Hugging Face name or a local directory, loaded with `AutoModelForMaskedLM`) must
have the explained transformer's wordpiece vocabulary (checked). It is loaded on first use, not when the
component is created (a training config declares the component before the masked LM exists), once per
process for all components (cached by resolved path), and saved with the pipeline by reference: the
setting's string, a relative path being resolved against the working directory when it is first used.

Known weakness (Pham et al. 2021, "Double Trouble"): a token the masked LM predicts with certainty from
its context gets ≈ 0, whatever the classifier makes of it; with all mass on the original token, exactly 0.

`extras`: ``candidates``, per spaCy token the number of candidate sequences marginalised (0 for tokens
without wordpieces, which score 0), and ``seconds``, the batch's time divided by its docs.
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy
import torch
from spacy.language import Language

from ..targets import Target
from ..view import EncodedBatch, ViewOutput
from .base import ASSIGNS, DEFAULT_CONFIG, Aggregation, DType, Labels, Output, Site, instance_chunks
from .perturbation import PerturbationMethod, check_positive, clean_values

#: probabilities are clipped to [PROBABILITY_CLIP, 1 − PROBABILITY_CLIP] before the odds: float32
#: probabilities resolve about 6e-8 near 1, so a saturated head's p = 1 becomes a large, finite odds.
PROBABILITY_CLIP = 1e-7

Candidate = Tuple[int, ...]  # wordpiece ids for a token's pieces (or a prefix of them)


@dataclass
class MaskedLM:
    """A loaded masked language model: the torch module (eval mode, out of autograd) and its vocabulary."""

    model: torch.nn.Module
    vocab: Dict[str, int]
    mask_id: int
    excluded_ids: List[int]  # never candidates: the special tokens but [UNK]


_MASKED_LMS: Dict[Tuple[str, str], MaskedLM] = {}


def load_masked_lm(name: str, device: torch.device) -> MaskedLM:
    """The masked LM `name` (a local directory, resolved against the working directory, or a Hugging Face
    name) on `device`, loaded once per process."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    local = Path(name).expanduser()
    where = str(local.resolve()) if local.exists() else name
    key = (where, str(device))
    if key not in _MASKED_LMS:
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModelForMaskedLM.from_pretrained(where)
        except (OSError, ValueError) as error:
            raise ValueError(f"Could not load the masked LM {name!r} (mlm setting; resolved to {where!r}): {error}. "
                             "Give a directory saved with save_pretrained (e.g. the project's `mlm` step writes "
                             "training/mlm) or a Hugging Face name available offline.") from None
        if tokenizer.mask_token_id is None:
            raise ValueError(f"The masked LM {name!r} has no mask token")
        model.to(device).eval()
        model.requires_grad_(False)
        excluded = [i for i in tokenizer.all_special_ids if i != tokenizer.unk_token_id]
        _MASKED_LMS[key] = MaskedLM(model, dict(tokenizer.get_vocab()), int(tokenizer.mask_token_id), excluded)
    return _MASKED_LMS[key]


@dataclass
class TokenSlot:
    """A spaCy token to marginalise: where the masked LM reads it and where its candidates go."""

    d: int  # the doc of the batch
    token: int
    context_row: int  # the batch row the masked LM reads
    pieces: List[int]  # the token's wordpiece columns in that row, left to right
    occurrences: List[Tuple[int, List[int]]]  # (row within the doc, columns) of every window holding it


class InputMarginalization(PerturbationMethod):
    method_name = "input_marginalization"

    @property
    def masked_lm(self) -> MaskedLM:
        """The `mlm` setting's model, loaded on first use and checked against the explained tokenizer."""
        name = self.cfg["mlm"]
        if not name:
            raise ValueError(f"{self.name}: input marginalization needs a masked LM: set `mlm` to a Hugging Face "
                             "name or a directory with the explained transformer's wordpiece vocabulary (the "
                             "project's `mlm` step trains one into training/mlm), e.g. "
                             "nlp.add_pipe('attr_input_marginalization', config={'mlm': 'training/mlm'})")
        mlm = load_masked_lm(name, self.view.device)
        vocab = self.view.tokenizer.get_vocab()
        if mlm.vocab != vocab:
            differing = sorted(set(mlm.vocab.items()) ^ set(vocab.items()), key=lambda item: item[1])[:3]
            raise ValueError(f"The masked LM {name!r} (mlm setting) does not have the explained transformer's "
                             f"wordpiece vocabulary ({len(mlm.vocab)} vs {len(vocab)} entries; first differences "
                             f"{differing}): candidates are wordpiece ids of one vocabulary, so the masked LM "
                             "must be trained on the transformer's tokenizer.")
        return mlm

    def token_scores_with_extras(self, batch: EncodedBatch, targets: List[List[Target]], output: ViewOutput
                                 ) -> Tuple[List[List[numpy.ndarray]], List[Dict[str, Any]]]:
        started = time.perf_counter()
        slots = [slot for slot in token_slots(batch) if targets[slot.d]]
        candidates = self.candidate_sets(batch, slots)
        values = self.candidate_values(batch, targets, slots, candidates)
        scores = [numpy.zeros((len(targets[d]), len(doc))) for d, doc in enumerate(batch.docs)]
        counts = [[0] * len(doc) for doc in batch.docs]
        clean_by_doc = [clean_values(output, targets, d) for d in range(len(batch.docs))]
        for slot, (sequences, likelihood), slot_values in zip(slots, candidates, values):
            clean = clean_by_doc[slot.d]
            weights = likelihood / likelihood.sum()
            # p(y|x) + Σ w (p_x̃ − p(y|x)), which is Σ w p_x̃ since Σ w = 1: the original's term is 0 and a
            # candidate the classifier ignores adds exactly 0.
            marginal = clean + weights[1:] @ (slot_values - clean) if len(sequences) > 1 else clean
            scores[slot.d][:, slot.token] = log_odds(clean, self.cfg["log_base"]) - log_odds(marginal, self.cfg["log_base"])
            counts[slot.d][slot.token] = len(sequences)
        seconds = (time.perf_counter() - started) / max(len(batch.docs), 1)
        notes = self.view.head.notes("wordpieces")  # candidates replace wordpieces: the spaCy tokens stay
        return [list(doc_scores) for doc_scores in scores], [{"candidates": c, "seconds": seconds, **notes}
                                                             for c in counts]

    # -- the candidate sets: a beam over each token's pieces, all tokens' masked-LM passes batched --------
    def candidate_sets(self, batch: EncodedBatch, slots: List[TokenSlot]) -> List[Tuple[List[Candidate], numpy.ndarray]]:
        """Per slot, the candidate sequences kept (the original first) and their joint likelihoods."""
        mlm = self.masked_lm
        originals = [tuple(int(batch.input_ids[s.context_row, c]) for c in s.pieces) for s in slots]
        beams: List[Dict[Candidate, float]] = [{(): 1.0} for _ in slots]
        for step in range(max((len(s.pieces) for s in slots), default=0)):
            queries = [(k, prefix) for k, s in enumerate(slots) if len(s.pieces) > step for prefix in beams[k]]
            probabilities = iter(self.piece_probabilities(batch, slots, queries, step, mlm))
            for k in dict.fromkeys(k for k, _ in queries):
                prefixes = list(beams[k])
                joint = torch.tensor([beams[k][p] for p in prefixes], dtype=torch.float64)[:, None] * \
                    torch.stack([next(probabilities) for _ in prefixes])
                beams[k] = self.extend(prefixes, joint, originals[k][:step + 1], mlm.excluded_ids)
        result = []
        for k, original in enumerate(originals):
            likelihood = beams[k].pop(original)
            sequences = [original] + list(beams[k])
            weights = numpy.asarray([likelihood] + list(beams[k].values()), dtype="float64")
            if weights.sum() == 0:  # every kept likelihood underflowed: the original alone
                weights[0] = 1.0
            result.append((sequences, weights))
        return result

    def extend(self, prefixes: List[Candidate], joint: torch.Tensor, original: Candidate,
               excluded_ids: List[int]) -> Dict[Candidate, float]:
        """The next beam from each prefix's extensions (`joint`: (prefixes, vocabulary) likelihoods): the
        truncation (σ or top-n), the `max_candidates` most likely, and the original prefix."""
        vocabulary = joint.shape[1]
        original_value = float(joint[prefixes.index(original[:-1]), original[-1]])  # its prefix is always kept
        joint = joint.clone()
        joint[:, excluded_ids] = 0.0
        flat = joint.reshape(-1)
        wanted = self.cfg["max_candidates"] if self.cfg["top_n"] is None else min(self.cfg["top_n"],
                                                                                 self.cfg["max_candidates"])
        # The `wanted` most likely (a partial sort: the whole vocabulary is never sorted); σ then truncates them.
        keep = torch.topk(flat, min(wanted, flat.numel())).indices
        if self.cfg["top_n"] is None:
            keep = keep[flat[keep] > self.cfg["sigma"]]
        beam = {prefixes[int(i) // vocabulary] + (int(i) % vocabulary,): float(flat[i]) for i in keep}
        beam[original] = original_value
        return beam

    def piece_probabilities(self, batch: EncodedBatch, slots: List[TokenSlot], queries: List[Tuple[int, Candidate]],
                            step: int, mlm: MaskedLM) -> Iterator[torch.Tensor]:
        """p_mlm(piece `step` | prefix, rest of the context row) over the vocabulary, for each query (slot,
        prefix): the token's pieces from `step` on masked, those before filled with the prefix."""
        chunk = self.cfg["internal_batch_size"]
        for start in range(0, len(queries), chunk):
            part = queries[start:start + chunk]
            rows = torch.as_tensor([slots[k].context_row for k, _ in part], device=batch.input_ids.device)
            ids = batch.input_ids[rows].clone()
            read = []
            for r, (k, prefix) in enumerate(part):
                pieces = slots[k].pieces
                ids[r, pieces[step:]] = mlm.mask_id
                ids[r, pieces[:step]] = torch.as_tensor(prefix, dtype=ids.dtype, device=ids.device)
                read.append(pieces[step])
            inputs = {"input_ids": ids, "attention_mask": batch.attention_mask[rows]}
            if batch.token_type_ids is not None:
                inputs["token_type_ids"] = batch.token_type_ids[rows]
            columns = torch.as_tensor(read, device=ids.device)
            with torch.no_grad(), projected_at(mlm.model, columns):
                logits = mlm.model(**inputs).logits[:, 0]
            yield from torch.softmax(logits.double(), -1).cpu()

    # -- the classifier on every candidate: batched instances of the docs' rows ---------------------------
    def candidate_values(self, batch: EncodedBatch, targets: List[List[Target]], slots: List[TokenSlot],
                         candidates: List[Tuple[List[Candidate], numpy.ndarray]]) -> List[numpy.ndarray]:
        """Per slot, (candidates but the original, targets) values of the doc's targets with the token
        replaced by each candidate."""
        instances = [(k, sequence) for k, (sequences, _) in enumerate(candidates) for sequence in sequences[1:]]
        found: List[List[numpy.ndarray]] = [[] for _ in slots]
        max_rows = self.cfg["internal_batch_size"]
        for chunk in instance_chunks(batch, [slots[k].d for k, _ in instances], max_rows):
            ids = torch.cat([replaced_rows(batch, slots[instances[i][0]], instances[i][1]) for i in chunk.instances])
            with torch.no_grad():
                scores = self.view.forward(batch, doc_index=chunk.doc_index, input_ids=ids, max_rows=max_rows).scores
            values = scores.double().cpu().numpy()
            for row, i in enumerate(chunk.instances):
                k = instances[i][0]
                found[k].append(numpy.asarray([values[row, t.position, t.label_index] for t in targets[slots[k].d]]))
        return [numpy.stack(rows) if rows else numpy.zeros((0, len(targets[s.d]))) for rows, s in zip(found, slots)]


def token_slots(batch: EncodedBatch) -> List[TokenSlot]:
    """Every spaCy token with wordpieces, in every doc of the batch, with the window its context comes from."""
    width = batch.width
    slots = []
    for d in range(len(batch.docs)):
        layout = batch.layout(d)
        lengths = batch.attention_mask[batch.row_starts[d]:batch.row_starts[d] + batch.rows[d]].sum(1).tolist()
        for token, pieces in enumerate(layout.alignment):
            if not pieces:
                continue
            by_row: Dict[int, List[int]] = {}
            for p in sorted(int(layout.positions[i]) for i in pieces):
                by_row.setdefault(p // width, []).append(p % width)
            # Context on both sides: the distance from the token's pieces to the row's first and last real
            # wordpiece; the largest wins, the first window on a tie.
            margin = {row: min(cols[0], lengths[row] - 1 - cols[-1]) for row, cols in by_row.items()}
            best = max(by_row, key=lambda row: (margin[row], -row))
            slots.append(TokenSlot(d, token, batch.row_starts[d] + best, by_row[best], sorted(by_row.items())))
    return slots


def replaced_rows(batch: EncodedBatch, slot: TokenSlot, sequence: Candidate) -> torch.Tensor:
    """The slot's doc rows with the token's pieces replaced by `sequence` in every window holding it (a
    window that truncation cut short takes the leading pieces)."""
    start, n = batch.row_starts[slot.d], batch.rows[slot.d]
    ids = batch.input_ids[start:start + n].clone()
    for row, columns in slot.occurrences:
        for column, piece in zip(columns, sequence):
            ids[row, column] = piece
    return ids


@contextmanager
def projected_at(model: torch.nn.Module, columns: torch.Tensor) -> Iterator[None]:
    """Inside the block the masked LM's vocabulary projection (its output embeddings) sees only one column
    per row, `columns[r]` of row `r`: logits (rows, 1, |V|) instead of (rows, T, |V|). The hook is removed
    on exit."""
    decoder = model.get_output_embeddings()
    if decoder is None:
        raise ValueError(f"The masked LM ({type(model).__name__}) has no output embeddings to project with")

    def gather(module: torch.nn.Module, args: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        hidden = args[0]
        return (hidden[torch.arange(hidden.shape[0], device=hidden.device), columns][:, None],) + args[1:]

    handle = decoder.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def log_odds(p: numpy.ndarray, base: float) -> numpy.ndarray:
    """log_base (p / (1 − p)), p clipped to [PROBABILITY_CLIP, 1 − PROBABILITY_CLIP]."""
    p = numpy.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return (numpy.log(p) - numpy.log1p(-p)) / numpy.log(base)


@Language.factory("attr_input_marginalization", assigns=ASSIGNS,
                  default_config={**DEFAULT_CONFIG, "output": "prob", "mlm": "", "sigma": 1e-5, "top_n": None,
                                  "max_candidates": 100, "log_base": 2.0})
def make_input_marginalization(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                               aggregation: Aggregation, attribute_at: Site, batch_size: int,
                               internal_batch_size: int, dtype: DType, key: Optional[str], mlm: str, sigma: float,
                               top_n: Optional[int], max_candidates: int, log_base: float) -> InputMarginalization:
    """Input marginalization (Kim et al. 2020): the weight of evidence log_b odds p(y|x) − log_b odds of
    p(y|x) marginalised over a masked LM's candidates for each spaCy token (chain rule over its pieces)."""
    if output != "prob":
        raise ValueError(f"input marginalization's weight of evidence is defined on probabilities: output must be "
                         f"'prob', got {output!r}")
    if not 0 <= sigma < 1:
        raise ValueError(f"sigma must be in [0, 1), got {sigma}")
    if log_base <= 0 or log_base == 1:
        raise ValueError(f"log_base must be positive and not 1, got {log_base}")
    check_positive(max_candidates=max_candidates, **({} if top_n is None else {"top_n": top_n}))
    return InputMarginalization(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                                attribute_at=attribute_at, batch_size=batch_size,
                                internal_batch_size=internal_batch_size, dtype=dtype, key=key, mlm=mlm, sigma=sigma,
                                top_n=top_n, max_candidates=max_candidates, log_base=log_base)
