"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks").

    IG_i = Σ_h (x − x′)_ih · ∫₀¹ ∂f(x′ + α(x − x′))/∂x_ih dα

Completeness says Σ_i IG_i = f(x) − f(x′); the gap δ = Σ_i IG_i − (f(x) − f(x′)) is reported with every
result (``extras["delta"]``, and the relative gap ``|δ| / |f(x) − f(x′)|``).

The integral is computed by ``n_steps = "auto"`` (default): points are placed where the output changes
until the gap is within `tolerance` (see `IntegratedGradients.adaptive`); or over a fixed number of
points with a `quadrature` rule (Gauss–Legendre, as Captum does by default, or the trapezoid rule).

The baseline x′ is the attribution-site value of a reference text of the same length: ``pad`` keeps
[CLS]/[SEP] and puts [PAD] everywhere else (the common choice for BERT); ``mask`` and ``unk`` use [MASK]
or [UNK]; ``zero`` is the zero tensor. Steps of several docs go through the transformer together, at most
`internal_batch_size` rows per forward/backward.

Under ``dtype = "bfloat16"`` only the points along the path run in bfloat16: x, x′, f(x) and f(x′) are
float32, so the reported gap is measured against the float32 model (see `IntegratedGradients.adaptive` for
how a tolerance below bfloat16's noise is detected and handed to float32).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy
import torch
from pydantic import StrictInt
from spacy.language import Language

from ..targets import Target, slot_values
from ..view import DifferentiableView, EncodedBatch
from .base import (ASSIGNS, DEFAULT_CONFIG, Aggregation, AttributionComponent, DType, Labels, Output, Site,
                   WordpieceMap, check_choice, instance_chunks, slot_gradients)

QUADRATURES = ("gausslegendre", "riemann_trapezoid")
BASELINES = ("pad", "mask", "unk", "zero")
Quadrature = Literal["gausslegendre", "riemann_trapezoid"]
Baseline = Literal["pad", "mask", "unk", "zero"]
# Gauss–Legendre points per segment of the adaptive path (exact to degree 11). On the 128 SST-2 dev docs of
# bench/speed.py (paths that rise steeply within a tenth of their length; the gap is relative to an
# |f(x) − f(x′)| of 0.012 for the median doc), reaching Captum-50's mean gap took 37.2 gradient evaluations
# and 8.1 probes per doc with 6 points and 8 probe steps (0.90 × Captum's time), against 51.5 and 21.6 with
# 3 points and 16 probe steps (1.19 ×); the default tolerance left a mean gap of 0.013 with 6 points against
# 0.10 with 3, for 23.7 + 7.0 evaluations against 14.3 + 15.4.
SEGMENT_NODES = 6
# Under bfloat16 a doc whose gap bound has not fallen below STALL_RATIO × its best for STALLED_ROUNDS rounds
# of splits is at bfloat16's noise floor (in float32 a split cuts a smooth segment's error ~2¹³-fold). One
# round: with 6-point segments a second one cost more bfloat16 evaluations (up to 264 per doc on the tiny
# saturated textcat of the tests) than the float32 integration that follows (48–78).
STALL_RATIO = 0.75
STALLED_ROUNDS = 1
# ... and one whose f at the path's ends differs from float32 by more than NOISE_SHARE × tolerance (relative)
# goes to float32 at once: the gap of a path whose every point carries that noise cannot be certified.
NOISE_SHARE = 0.5


def quadrature_points(n_steps: int, rule: str) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Points α in [0, 1] and weights for ∫₀¹ g(α) dα ≈ Σ_k w_k g(α_k) under the quadrature `rule`."""
    check_choice("quadrature", rule, QUADRATURES)
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if rule == "gausslegendre":
        nodes, weights = numpy.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if rule == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("riemann_trapezoid needs at least 2 steps")
        # The trapezoid rule proper: the weights sum to 1 (Captum's variant sums to 1 − 1/n).
        weights = numpy.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2
        return numpy.linspace(0, 1, n_steps), weights


def baseline_inputs(view: DifferentiableView, batch: EncodedBatch, inputs: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline x′ at the attribution site, for every row of the batch."""
    check_choice("baseline", kind, BASELINES)
    if kind == "zero":
        return torch.zeros_like(inputs)
    ids = batch.input_ids.clone()
    structural = torch.isin(ids, torch.tensor(view.structural_ids(), device=ids.device))
    ids[batch.attention_mask.bool() & ~structural] = view.token_id(kind)
    return view.capture(batch, ids)


class StraightPath:
    """The straight path x′ + α(x − x′) for the docs of a batch: the targets' outputs along it (no-grad
    forwards) and their gradients (forward + backward), for any points, batched across docs and points
    at most `max_rows` transformer rows at a time."""

    def __init__(self, view: DifferentiableView, batch: EncodedBatch, inputs: torch.Tensor,
                 baseline: torch.Tensor, targets: List[List[Target]], max_rows: int):
        self.view, self.batch, self.targets, self.max_rows = view, batch, targets, max_rows
        self.baseline, self.difference = baseline, inputs - baseline
        self.n_slots = max((len(t) for t in targets), default=0)

    def _points(self, chunk, alphas: torch.Tensor) -> torch.Tensor:
        alpha = alphas[chunk.row_instance].view(-1, 1, 1)
        return self.baseline[chunk.rows] + alpha * self.difference[chunk.rows]

    def outputs(self, points: Sequence[Tuple[int, float]]) -> torch.Tensor:
        """f of each target slot at each (doc, α), shaped (points, slots)."""
        alphas = self._alphas([alpha for _, alpha in points])
        values = torch.zeros((len(points), self.n_slots), device=alphas.device)
        with torch.no_grad():
            for chunk in instance_chunks(self.batch, [d for d, _ in points], self.max_rows):
                output = self.view.forward(self.batch, self._points(chunk, alphas), doc_index=chunk.doc_index,
                                           max_rows=self.max_rows)
                for slot in range(self.n_slots):
                    values[chunk.instances, slot] = slot_values(output.scores, chunk.doc_index, self.targets, slot)
        return values

    def gradient_maps(self, points: Sequence[Tuple[int, float, float]]) -> List[torch.Tensor]:
        """w · Σ_h (x − x′)_h ∂f/∂x_h at each (doc, α, w): one (slots, rows, T) map per point."""
        alphas = self._alphas([alpha for _, alpha, _ in points])
        weights = self._alphas([weight for _, _, weight in points])
        maps: List[torch.Tensor] = [None] * len(points)  # type: ignore[list-item]
        for chunk in instance_chunks(self.batch, [d for d, _, _ in points], self.max_rows):
            point = self._points(chunk, alphas).requires_grad_(True)
            output = self.view.forward(self.batch, point, doc_index=chunk.doc_index, max_rows=self.max_rows)
            per_slot = torch.zeros((self.n_slots,) + tuple(point.shape[:2]), device=point.device)
            for slot, grad in slot_gradients(output, self.targets):
                per_slot[slot] = (self.difference[chunk.rows] * grad).sum(-1)
            per_slot = per_slot * weights[chunk.row_instance].view(1, -1, 1)
            for i, values in zip(chunk.instances, chunk.split(per_slot.transpose(0, 1), self.batch)):
                maps[i] = values.transpose(0, 1)
        return maps

    def _alphas(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=self.difference.dtype, device=self.difference.device)


@dataclass
class Segment:
    """[a, b] of the path with the targets' outputs at its ends and its quadrature's attribution map."""

    a: float
    b: float
    f_a: torch.Tensor  # (slots,)
    f_b: torch.Tensor
    map: Optional[torch.Tensor] = None  # (slots, rows, T)

    def gap(self, scale: torch.Tensor) -> float:
        """Completeness gap of the segment, |Σ map − (f(b) − f(a))|, relative to `scale`, worst slot."""
        return float(((self.map.sum((1, 2)) - (self.f_b - self.f_a)).abs() / scale).max())


class IntegratedGradients(AttributionComponent):
    method_name = "integrated_gradients"
    uses_gradients = True

    def explain(self, batch: EncodedBatch) -> List[List[WordpieceMap]]:
        view, cfg = self.view, self.cfg
        with view.frozen():
            # The path's ends, and f(x) − f(x′) that completeness is measured against, in float32 whatever
            # the dtype: under bfloat16 only the points along the path are approximate, never the certificate.
            with view.precision("float32"):
                inputs = view.capture(batch)
                baseline = baseline_inputs(view, batch, inputs, cfg["baseline"])
                with torch.no_grad():
                    output = view.forward(batch, inputs, max_rows=cfg["internal_batch_size"])
                    baseline_output = view.forward(batch, baseline, max_rows=cfg["internal_batch_size"])
            targets = self.targets(output, batch)
            path = StraightPath(view, batch, inputs, baseline, targets, cfg["internal_batch_size"])
            if cfg["n_steps"] == "auto":
                maps, stats = self.adaptive(path, output, baseline_output)
            else:
                maps, stats = self.uniform(path), [{"n_steps": cfg["n_steps"]} for _ in batch.docs]
        per_slot = [torch.cat([m[slot] if m is not None else inputs.new_zeros((batch.rows[d], batch.width))
                               for d, m in enumerate(maps)]) for slot in range(path.n_slots)]

        def extras(d: int, target: Target) -> Dict[str, Any]:
            at = (d, target.position, target.label_index)
            total = float(maps[d][targets[d].index(target)].sum())
            difference = float(output.scores[at] - baseline_output.scores[at])
            delta = total - difference
            return {"delta": delta, "relative_delta": abs(delta) / max(abs(difference), 1e-12),
                    "baseline_output": float(baseline_output.scores[at]), **stats[d]}

        return self.maps(batch, targets, output, per_slot, extras)

    def uniform(self, path: StraightPath) -> List[Optional[torch.Tensor]]:
        """`n_steps` quadrature points over [0, 1] for every doc, summed per doc."""
        alphas, weights = quadrature_points(self.cfg["n_steps"], self.cfg["quadrature"])
        docs = [d for d in range(len(path.batch.docs)) if path.batch.rows[d] and path.targets[d]]
        points = [(d, float(a), float(w)) for d in docs for a, w in zip(alphas, weights)]
        maps: List[Optional[torch.Tensor]] = [None] * len(path.batch.docs)
        for (d, _, _), point_map in zip(points, path.gradient_maps(points)):
            maps[d] = point_map if maps[d] is None else maps[d] + point_map
        return maps

    def adaptive(self, path: StraightPath, output, baseline_output) -> Tuple[List, List[Dict[str, Any]]]:
        """Place gradient evaluations where the output changes, until completeness is certified.

        1. Probe f at `probe_steps` − 1 interior points of a uniform grid with no-grad forwards (about 0.6 of
           the cost of a gradient evaluation each on a CPU).
        2. Cut the path into `initial_segments` segments holding equal shares of a mix of the output's
           variation |Δf| along the grid and of path length, so that segments are short where f moves.
        3. Integrate each segment with `SEGMENT_NODES`-point Gauss–Legendre. Stop when the doc's completeness gap
           |Σ attributions − (f(x) − f(x′))| is within `tolerance` (relative to |f(x) − f(x′)|; worst
           target), or, for an output that moves less than `output_floor` along the path, within
           `tolerance` × `output_floor` (a tighter gap on such a doc buys nothing and costs the most steps).
           Else bisect the segments with the largest gaps (each segment's own gap
           |Σ map − (f(b) − f(a))| is known exactly, since f at its ends comes from forward passes; their
           sum, `gap_bound`, bounds the doc's gap), one forward per midpoint, and integrate the halves,
           within `max_steps` gradient evaluations per doc.

        Under ``dtype = "bfloat16"`` the probes and gradient evaluations run in bfloat16, f(x) and f(x′) in
        float32. bfloat16 noise puts a floor under the gap. A doc whose f at the path's ends, probed in
        bfloat16, differs from float32 by more than `NOISE_SHARE` × tolerance (relative), or whose gap bound
        stops shrinking as its segments split (`STALLED_ROUNDS` rounds in a row without falling below
        `STALL_RATIO` × its best), cannot reach the tolerance in bfloat16 and is integrated in float32
        (``extras``: ``fallback = "float32"``, with the abandoned attempt's ``bfloat16_steps`` and
        ``bfloat16_error``).
        """
        n = len(path.batch.docs)
        docs = [d for d in range(n) if path.batch.rows[d] and path.targets[d]]
        f_start = [self._slot_outputs(path, baseline_output, d) for d in range(n)]
        f_end = [self._slot_outputs(path, output, d) for d in range(n)]
        maps, stats, stalled = self._certify(path, docs, f_start, f_end, watch_stalls=self.view.reduced_precision)
        if stalled:
            with self.view.precision("float32"):
                exact_maps, exact_stats, _ = self._certify(path, stalled, f_start, f_end, watch_stalls=False)
            for d in stalled:
                maps[d] = exact_maps[d]
                stats[d] = {**exact_stats[d], "fallback": "float32", "bfloat16_steps": stats[d]["n_steps"],
                            "bfloat16_error": stats[d]["bfloat16_error"]}
        return maps, stats

    def _certify(self, path: StraightPath, docs: List[int], f_start: List[torch.Tensor], f_end: List[torch.Tensor],
                 watch_stalls: bool) -> Tuple[List, List[Dict[str, Any]], List[int]]:
        """Steps 1–3 of `adaptive` for `docs`: their maps, stats and, when `watch_stalls`, the docs whose gap
        stopped shrinking (left unconverged)."""
        cfg, n = self.cfg, len(path.batch.docs)
        nodes, node_weights = quadrature_points(SEGMENT_NODES, "gausslegendre")
        probe = numpy.linspace(0.0, 1.0, cfg["probe_steps"] + 1)
        # Watching for bfloat16 noise probes the path's ends too, to compare them with float32.
        grid = probe if watch_stalls else probe[1:-1]
        stats = [{"n_steps": 0, "n_probes": len(grid), "converged": False} for _ in range(n)]
        if not docs:
            return [None] * n, stats, []
        f_probes = path.outputs([(d, float(a)) for d in docs for a in grid]).view(len(docs), -1, path.n_slots)
        scale = {d: (f_end[d] - f_start[d]).abs().clamp_min(cfg["output_floor"]) for d in docs}
        stalled: List[int] = []
        segments: Dict[int, List[Segment]] = {}
        for j, d in enumerate(docs):
            interior = f_probes[j]
            if watch_stalls:
                # f at the path's ends in reduced precision against float32: the noise that every segment
                # of the path carries. Above a share of the tolerance no refinement can certify it.
                error = torch.stack([(interior[0] - f_start[d]).abs(), (interior[-1] - f_end[d]).abs()]).max(0).values
                stats[d]["bfloat16_error"] = float((error / scale[d]).max())
                interior = interior[1:-1]
                if stats[d]["bfloat16_error"] > NOISE_SHARE * cfg["tolerance"]:
                    stalled.append(d)
                    continue
            f_grid = torch.cat([f_start[d][None], interior, f_end[d][None]])
            segments[d] = [Segment(a, b, f_grid[i], f_grid[k]) for a, b, i, k in
                           self._initial_cuts(probe, f_grid, cfg["initial_segments"])]
        best_bound = {d: float("inf") for d in docs}
        rounds_without_progress = {d: 0 for d in docs}
        pending = [(d, s) for d in segments for s in segments[d]]
        while pending:
            points = [(d, s.a + (s.b - s.a) * float(t), (s.b - s.a) * float(w))
                      for d, s in pending for t, w in zip(nodes, node_weights)]
            point_maps = path.gradient_maps(points)
            for k, (d, segment) in enumerate(pending):
                segment.map = sum(point_maps[len(nodes) * k:len(nodes) * (k + 1)])
                stats[d]["n_steps"] += len(nodes)
            splits = []
            for d in {d for d, _ in pending}:
                total = sum(s.map.sum((1, 2)) for s in segments[d])
                gap = float(((total - (f_end[d] - f_start[d])).abs() / scale[d]).max())
                gaps = [s.gap(scale[d]) for s in segments[d]]
                stats[d]["gap_bound"], stats[d]["gap"] = sum(gaps), gap
                if gap <= cfg["tolerance"]:
                    stats[d]["converged"] = True
                    continue
                bound = stats[d]["gap_bound"]
                rounds_without_progress[d] = 0 if bound < STALL_RATIO * best_bound[d] else rounds_without_progress[d] + 1
                best_bound[d] = min(best_bound[d], bound)
                if watch_stalls and rounds_without_progress[d] >= STALLED_ROUNDS:
                    stalled.append(d)
                    continue
                budget = (cfg["max_steps"] - stats[d]["n_steps"]) // (2 * len(nodes))
                remaining = sum(gaps)
                for i in numpy.argsort(gaps)[::-1][:budget]:
                    splits.append((d, segments[d][i]))
                    remaining -= gaps[i]
                    if remaining <= cfg["tolerance"] / 2:
                        break
            midpoints = path.outputs([(d, (s.a + s.b) / 2) for d, s in splits]) if splits else None
            pending = []
            for (d, segment), f_mid in zip(splits, midpoints if splits else []):
                middle = (segment.a + segment.b) / 2
                halves = [Segment(segment.a, middle, segment.f_a, f_mid), Segment(middle, segment.b, f_mid, segment.f_b)]
                at = segments[d].index(segment)
                segments[d][at:at + 1] = halves
                pending.extend((d, half) for half in halves)
                stats[d]["n_probes"] += 1
        maps = [sum(s.map for s in segments[d]) if d in segments and d not in stalled else None for d in range(n)]
        return maps, stats, sorted(stalled)

    @staticmethod
    def _slot_outputs(path: StraightPath, output, d: int) -> torch.Tensor:
        values = torch.zeros(path.n_slots, device=output.scores.device)
        for slot, target in enumerate(path.targets[d]):
            values[slot] = output.scores[d, target.position, target.label_index]
        return values

    @staticmethod
    def _initial_cuts(grid: numpy.ndarray, f_grid: torch.Tensor, n_segments: int):
        """(a, b, grid index of a, grid index of b) for segments holding equal shares of
        ½ (variation of f) + ½ (path length), cut at grid points."""
        variation = (f_grid[1:] - f_grid[:-1]).abs().sum(-1).cpu().numpy()
        share = 0.5 * variation / max(variation.sum(), 1e-12) + 0.5 / len(variation)
        cumulative = numpy.concatenate([[0.0], numpy.cumsum(share)])
        cuts = sorted({0, len(grid) - 1} | {int(numpy.argmin(numpy.abs(cumulative - q)))
                                            for q in numpy.linspace(0, 1, n_segments + 1)[1:-1]})
        return [(float(grid[i]), float(grid[k]), i, k) for i, k in zip(cuts[:-1], cuts[1:])]


IG_CONFIG: Dict[str, Any] = {**DEFAULT_CONFIG, "n_steps": "auto", "quadrature": "gausslegendre", "baseline": "pad",
                             "tolerance": 0.01, "output_floor": 0.1, "max_steps": 256,
                             "probe_steps": 8, "initial_segments": 4}


@Language.factory("attr_integrated_gradients", default_config=IG_CONFIG, assigns=ASSIGNS)
def make_integrated_gradients(nlp: Language, name: str, head: Optional[str], labels: Labels, output: Output,
                              aggregation: Aggregation, attribute_at: Site, batch_size: int,
                              internal_batch_size: int, dtype: DType, key: Optional[str],
                              n_steps: Union[Literal["auto"], StrictInt], quadrature: Quadrature,
                              baseline: Baseline, tolerance: float, output_floor: float, max_steps: int,
                              probe_steps: int, initial_segments: int) -> IntegratedGradients:
    """Integrated gradients from a `baseline` (pad, mask, unk, zero). ``n_steps = "auto"`` (default) places
    points until the relative completeness gap is within `tolerance` (absolute `tolerance` × `output_floor`
    where the output moves less than `output_floor`), using at most `max_steps` gradient evaluations per
    doc; a number of steps uses that many points of the `quadrature` rule."""
    if n_steps == "auto":
        if not 0 < tolerance < 1 or output_floor <= 0 or probe_steps < 2 \
                or not 1 <= initial_segments <= max_steps // SEGMENT_NODES:
            raise ValueError(f"auto steps need 0 < tolerance < 1, output_floor > 0, probe_steps >= 2 and "
                             f"1 <= initial_segments <= max_steps / {SEGMENT_NODES}")
    else:
        quadrature_points(n_steps, quadrature)
    return IntegratedGradients(nlp, name, head=head, labels=labels, output=output,
                               aggregation=aggregation, attribute_at=attribute_at, batch_size=batch_size,
                               dtype=dtype, key=key, n_steps=n_steps, quadrature=quadrature, baseline=baseline,
                               internal_batch_size=internal_batch_size, tolerance=tolerance,
                               output_floor=output_floor, max_steps=max_steps, probe_steps=probe_steps,
                               initial_segments=initial_segments)
