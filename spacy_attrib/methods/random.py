"""Random attribution: the floor every evaluation table needs.

Each wordpiece of a target gets a draw from N(0, 1), seeded by the `seed` setting, the doc's text and the
target (label and position), so a doc's scores do not depend on batching and repeat across runs. No
gradient is taken; one forward pass finds the targets.
"""

import zlib
from typing import List, Optional

import numpy
import torch
from spacy.language import Language

from ..targets import Target
from ..view import EncodedBatch
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap, doc_seed)


class RandomAttribution(AttributionComponent):
    method_name = "random"

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        with torch.no_grad():
            output = self.view.forward(batch, max_rows=self.cfg["internal_batch_size"])
        targets = self.targets(output, batch)
        per_slot = []
        for slot in range(max((len(t) for t in targets), default=0)):
            scores = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
            for d, doc_targets in enumerate(targets):
                if slot < len(doc_targets):
                    start, n = batch.row_starts[d], batch.rows[d]
                    rng = numpy.random.default_rng(self.target_seed(batch, d, doc_targets[slot]))
                    scores[start:start + n] = torch.as_tensor(rng.standard_normal((n, batch.width)), dtype=torch.float32)
            per_slot.append(scores)
        return self.maps(batch, targets, output, per_slot)

    def target_seed(self, batch: EncodedBatch, d: int, target: Target) -> List[int]:
        return [doc_seed(self.cfg["seed"], batch.docs[d]), zlib.crc32(target.label.encode("utf8")), target.position]


@Language.factory("attr_random", default_config={**DEFAULT_CONFIG, "seed": 0}, assigns=ASSIGNS)
def make_random(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                aggregation: Aggregation, attribute_at: Site, batch_size: int, internal_batch_size: int,
                dtype: DType, key: Optional[str], seed: int) -> RandomAttribution:
    """Random scores (seeded N(0, 1) per wordpiece): the baseline of evaluation tables."""
    return RandomAttribution(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                             attribute_at=attribute_at, batch_size=batch_size, internal_batch_size=internal_batch_size,
                             dtype=dtype, key=key, seed=seed)
