"""`ner`: the transition-based entity recognizer (``spacy.TransitionBasedParser.v2``, with or without its
upper layer), stepped with its own state machine and its own step model.

The explained output of an entity is the log-probability of the transitions that built it along the
greedy predicted path: at each of its steps (its B-, I-, L- actions, or its U- action) the log-softmax
of the step's scores over the actions valid at that step, summed over the entity's steps. Actions the
component has never seen in training are left out of the softmax (the component gives them the lowest
score of the batch, so they are never predicted, and counting them would make an output depend on the
batch). ``prob`` is the exponential of that sum; ``logit`` the sum of the chosen actions' raw scores.

The path is predicted once from the docs themselves (the plan: at each step the best valid action, as
the component predicts) and every other pass replays it, so an entity's output is always the same
transitions' log-probability, also for perturbed inputs. It is stepped on copies of the docs without
entity annotation: entities set before the ner runs (an entity ruler before it) would constrain its
moves; a doc whose entities differ from the replayed path's gets a warning.
"""

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc
from thinc.api import get_array_module

from ...targets import LabelsSetting, Target
from ..encoding import EncodedBatch
from .base import Backprop, Head, unannotated_copy


@dataclass
class PredictedPath:
    """The greedy path of each doc of a batch, padded to the longest one."""

    copies: List[Doc]  # the docs without entity annotation, which the states step over
    actions: torch.Tensor  # (docs, steps) the action taken at each step (0 past a doc's last step)
    allowed: torch.Tensor  # (docs, steps, actions) bool: valid and seen actions (all past the last step)
    n_steps: List[int]
    entities: List[List[Tuple[int, int, str]]]  # (start, end, label) of each entity the path builds
    membership: torch.Tensor  # (docs, steps, entity slots): 1 where the step builds the entity
    entity_labels: torch.Tensor  # (docs, entity slots, labels): one-hot label of each entity


class ParserHead(Head):
    factories = ("ner",)

    def __init__(self, name: str, pipe: Any, listeners: list, device: torch.device):
        super().__init__(name, pipe, listeners, device)
        beam_width = pipe.cfg.get("beam_width", 1)
        if beam_width != 1:
            raise ValueError(f"Component {name!r} is a beam-search ner (beam_width = {beam_width}): its states are "
                             "beams, not one predicted path. Supported: the greedy 'ner' (beam_width = 1), "
                             "spacy.TransitionBasedParser.v2 with or without use_upper")
        if self.model.name != "parser_model":
            raise ValueError(f"The model of {name!r} is {self.model.name!r}; supported: "
                             "spacy.TransitionBasedParser.v2")
        self.moves = pipe.moves
        self.move_names = [self.moves.get_class_name(i) for i in range(self.moves.n_moves)]

    def check_labels(self, labels: LabelsSetting) -> None:
        if labels == "all":
            raise ValueError(f"labels = 'all' is not defined for the ner {self.name!r}: each entity is explained "
                             "for the label its transitions built. Use 'predicted' or a list of entity labels")
        super().check_labels(labels)

    # -- the predicted path --------------------------------------------------------------------------
    def plan(self, batch: EncodedBatch, hidden_states: Callable[[], torch.Tensor]) -> PredictedPath:
        copies = [unannotated_copy(doc) for doc in batch.docs]
        seen = numpy.ones(len(self.move_names), dtype=bool)
        seen[list(self.model.attrs["unseen_classes"])] = False
        doc_index = list(range(len(batch.docs)))
        allowed: List[List[numpy.ndarray]] = [[] for _ in doc_index]
        chosen: List[List[int]] = [[] for _ in doc_index]
        tokens: List[List[int]] = [[] for _ in doc_index]

        def greedy(t: int, active: List[int], states: list, scores: numpy.ndarray) -> List[int]:
            actions = []
            for row, i in enumerate(active):
                valid = numpy.array([self.moves.is_valid(states[i], name) for name in self.move_names])
                mask = valid & seen if (valid & seen).any() else valid
                action = int(numpy.where(mask, scores[row], -numpy.inf).argmax())
                allowed[i].append(mask)
                chosen[i].append(action)
                tokens[i].append(states[i].B(0))
                actions.append(action)
            return actions

        self._step(batch, hidden_states(), doc_index, copies, greedy)
        entities = [self._entities(chosen[d], tokens[d]) for d in doc_index]
        for doc, doc_entities in zip(batch.docs, entities):
            if doc.has_annotation("ENT_IOB") and [(e.start, e.end, e.label_) for e in doc.ents] != doc_entities:
                warnings.warn(f"The entities of {doc.text[:40]!r}… differ from the path {self.name!r} predicts on it "
                              f"without entity annotation; explaining the predicted path's {doc_entities}")
        return self._path(copies, allowed, chosen, tokens, entities)

    def _entities(self, actions: List[int], tokens: List[int]) -> List[Tuple[int, int, str]]:
        entities, start = [], 0
        for action, token in zip(actions, tokens):
            move, _, label = self.move_names[action].partition("-")
            if move in ("B", "U"):
                start = token
            if move in ("L", "U"):
                entities.append((start, token + 1, label))
        return entities

    def _path(self, copies, allowed, chosen, tokens, entities) -> PredictedPath:
        n_docs, n_moves = len(copies), len(self.move_names)
        n_steps = max([len(c) for c in chosen] + [1])
        n_slots = max([len(e) for e in entities] + [1])
        actions = numpy.zeros((n_docs, n_steps), dtype="int64")
        allowed_array = numpy.ones((n_docs, n_steps, n_moves), dtype=bool)
        membership = numpy.zeros((n_docs, n_steps, n_slots), dtype="float32")
        labels = numpy.zeros((n_docs, n_slots, len(self.labels)), dtype="float32")
        for d in range(n_docs):
            steps = len(chosen[d])
            actions[d, :steps] = chosen[d]
            if steps:
                allowed_array[d, :steps] = numpy.stack(allowed[d])
            for e, (start, end, label) in enumerate(entities[d]):
                membership[d, [t for t, token in enumerate(tokens[d]) if start <= token < end], e] = 1.0
                labels[d, e, self.labels.index(label)] = 1.0

        def tensor(array):
            return torch.as_tensor(array, device=self.device)

        return PredictedPath(copies, tensor(actions), tensor(allowed_array), [len(c) for c in chosen], entities,
                             tensor(membership), tensor(labels))

    # -- stepping ------------------------------------------------------------------------------------
    def _step(self, batch: EncodedBatch, hidden: torch.Tensor, doc_index: List[int], docs: Sequence[Doc],
              choose: Callable[[int, List[int], list, numpy.ndarray], List[int]]):
        """Step the parser over instances of `docs` until every state is final, taking the actions
        `choose(step, active instances, states, scores)` gives. Returns the step model, its finish callback,
        the listener outputs with their row offsets, and per step (active instances, scores, backprop)."""
        outputs, offsets = self.listener_outputs(batch, hidden, doc_index)
        with self.listening(batch, docs, outputs):
            step_model, finish = self.model.begin_update(list(docs))
        # ParserStepModel hard-codes a dropout of 0.1 on its upper layer's input when training.
        step_model.attrs["dropout_rate"] = 0.0
        states = self.moves.init_batch(list(docs))
        steps = []
        active = [i for i, state in enumerate(states) if not state.is_final()]
        t = 0
        while active:
            scores, backprop_step = step_model.begin_update([states[i] for i in active])
            steps.append((active, scores, backprop_step))
            for i, action in zip(active, choose(t, active, states, self.model.ops.to_numpy(scores))):
                self.moves.apply_transition(states[i], self.move_names[action])
            active = [i for i in active if not states[i].is_final()]
            t += 1
        return step_model, finish, outputs, offsets, steps

    def begin_update(self, batch: EncodedBatch, hidden: torch.Tensor, doc_index: List[int]
                     ) -> Tuple[torch.Tensor, Backprop]:
        path: PredictedPath = batch.plan
        docs = [path.copies[d] for d in doc_index]
        replayed = path.actions.cpu().numpy()

        def replay(t: int, active: List[int], states: list, scores: numpy.ndarray) -> List[int]:
            return [int(replayed[doc_index[i], t]) for i in active]

        step_model, finish, outputs, offsets, steps = self._step(batch, hidden, doc_index, docs, replay)
        logits = torch.zeros((len(doc_index),) + tuple(path.allowed.shape[1:]), device=self.device)
        for t, (active, scores, _) in enumerate(steps):
            logits[active, t] = torch.as_tensor(self.model.ops.to_numpy(scores), device=self.device).float()

        def backprop(d_logits: torch.Tensor) -> torch.Tensor:
            d_hidden = torch.zeros_like(hidden)
            d_steps = d_logits.detach().float().cpu().numpy()
            step_model.backprops = []  # the steps' backprops queue up here until finish consumes them
            with self.listening(batch, docs, outputs, self.gradient_receiver(d_hidden, offsets, batch, doc_index, docs)):
                for t, (active, scores, backprop_step) in enumerate(steps):
                    xp = get_array_module(scores)
                    backprop_step(xp.ascontiguousarray(xp.asarray(d_steps[active, t]), dtype="float32"))
                finish(None)
            return d_hidden

        return logits, backprop

    def scores(self, logits: torch.Tensor, batch: EncodedBatch, doc_index: List[int], output: str) -> torch.Tensor:
        path: PredictedPath = batch.plan
        index = torch.as_tensor(doc_index, dtype=torch.long, device=self.device)
        chosen = path.actions[index].unsqueeze(-1)
        if output == "logit":
            per_step = logits.gather(-1, chosen)[..., 0]
        else:
            log_probs = torch.log_softmax(logits.masked_fill(~path.allowed[index], float("-inf")), -1)
            per_step = log_probs.gather(-1, chosen)[..., 0]
        values = torch.einsum("is,ise->ie", per_step, path.membership[index])
        if output == "prob":
            values = values.exp()
        return values.unsqueeze(-1) * path.entity_labels[index]

    def targets(self, batch: EncodedBatch, logits: torch.Tensor, labels: LabelsSetting) -> List[List[Target]]:
        path: PredictedPath = batch.plan
        return [[Target(label, self.labels.index(label), position=e, span=(start, end))
                 for e, (start, end, label) in enumerate(entities) if labels == "predicted" or label in labels]
                for entities in path.entities]

    def position(self, plan: PredictedPath, d: int, token: Optional[int], span: Optional[Tuple[int, int]],
                 label: str) -> Optional[int]:
        entities = plan.entities[d]
        return entities.index((*span, label)) if span and (*span, label) in entities else None
