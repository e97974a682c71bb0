"""displaCy-style HTML for attributions: each token shaded by its score, red for negative, white at 0,
blue for positive.

    from spacy_attrib.render import render, serve
    html = render(docs, "integrated_gradients")   # a fragment; page=True for a whole page
    serve(docs)                                   # http://0.0.0.0:5000

A token × token `Interaction` (integrated Jacobians of a similarity) renders as a heatmap, as the figures of
Moeller et al. (2023) show it: `render_interaction` (HTML, the same colours) and `interaction_figure`
(matplotlib; ``interaction_figure(result).savefig("pair.png")``).
"""

import html
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.tokens import Doc
from spacy.util import is_in_jupyter
from wasabi import msg

from .attribution import Attribution, Interaction, iter_attributions

NEGATIVE_RGB = (214, 39, 40)
NEUTRAL_RGB = (255, 255, 255)
POSITIVE_RGB = (31, 119, 180)
# Above this share of the scale the background is dark enough that black text gets hard to read.
LIGHT_TEXT_FROM = 0.6

CSS = """
.attrib-block { margin: 0 0 2em 0; font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
.attrib-heading { font-size: 14px; color: #333; margin-bottom: 0.5em; }
.attrib-heading .attrib-label { font-weight: bold; }
.attrib-tokens { font-size: 18px; line-height: 2.2; white-space: pre-wrap; }
.attrib-token { padding: 0.2em 0.1em; border-radius: 0.2em; }
.attrib-target { outline: 2px solid #222; outline-offset: 2px; border-radius: 0.2em; }
.attrib-legend { width: 14em; font-size: 12px; color: #555; margin-top: 0.5em; }
.attrib-scale { height: 0.8em; border: 1px solid #ccc; }
.attrib-scale-labels { display: flex; justify-content: space-between; }
.attrib-heatmap { border-collapse: collapse; font-size: 13px; }
.attrib-heatmap td { width: 2.2em; height: 2.2em; border: 1px solid #eee; }
.attrib-heatmap th { font-weight: normal; padding: 0 0.4em; text-align: right; }
.attrib-heatmap thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; padding: 0.4em 0; }
.attrib-heatmap .attrib-sum { color: #555; font-style: italic; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>spacy-attrib</title>
<style>{css}</style>
</head>
<body style="margin: 2em;">
{body}
</body>
</html>"""

Selection = List[Tuple[Doc, List[Attribution]]]


def render(docs: Union[Doc, Iterable[Doc]], key: Optional[str] = None, label: Optional[str] = None, *,
           page: bool = False, jupyter: Optional[bool] = None, minify: bool = False) -> str:
    """HTML for the attributions stored on `docs`: one block per doc-level result, per entity/span target
    and per token target, each token's background on a diverging scale (red negative, white at 0, blue
    positive) normalised by the block's largest |score|, its score in the tooltip, the target outlined.

    `key` picks the method (needed when more than one is stored), `label` the target label (default:
    all). Docs without a matching result are skipped; ValueError only when no doc has one. `page=True`
    gives a self-contained HTML page. Like displaCy, in Jupyter (auto-detected when `jupyter` is None)
    the markup is also displayed inline; it is returned either way.
    """
    docs = [docs] if isinstance(docs, Doc) else list(docs)
    selected = _select(docs, key, label)
    blocks = [_block(doc, attribution) for doc, attributions in selected for attribution in attributions]
    # Minifying only touches our own markup: token text keeps its newlines.
    separator, css, template = ("", " ".join(CSS.split()), PAGE.replace("\n", "")) if minify else ("\n", CSS, PAGE)
    markup = separator.join(blocks)
    # The fragment carries its CSS too, so it looks the same pasted into a page or shown in Jupyter.
    markup = template.format(css=css, body=markup) if page else f"<style>{css}</style>{separator}{markup}"
    if jupyter or (jupyter is None and is_in_jupyter()):
        from IPython.display import HTML, display

        # tex2jax_ignore, as displaCy does: keeps MathJax from typesetting a "$" in the text.
        display(HTML(f'<span class="tex2jax_ignore">{markup}</span>'))
    return markup


def serve(docs: Union[Doc, Iterable[Doc]], key: Optional[str] = None, label: Optional[str] = None, *,
          port: int = 5000, host: str = "0.0.0.0") -> None:
    """Serve `render(docs, key, label, page=True)` (red negative, white at 0, blue positive) over HTTP,
    like `spacy.displacy.serve`, until interrupted with Ctrl+C."""
    from wsgiref import simple_server

    httpd = simple_server.make_server(host, port, make_app(render(docs, key, label, page=True, jupyter=False)))
    msg.good(f"Serving attributions on http://{host}:{port} ...")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        msg.info(f"Shutting down server on port {port}.")
    finally:
        httpd.server_close()


def make_app(markup: str) -> Callable:
    """A WSGI app answering every request with `markup` as UTF-8 HTML."""
    body = markup.encode("utf-8")

    def app(environ: Dict, start_response: Callable) -> List[bytes]:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def _select(docs: Sequence[Doc], key: Optional[str], label: Optional[str]) -> Selection:
    """Each doc with its results for `key` and `label`; raises when nothing at all matches."""
    stored = [(doc, list(iter_attributions(doc))) for doc in docs]
    keys = sorted({attribution.method for _, attributions in stored for attribution in attributions})
    if not keys:
        raise ValueError("No attributions are stored on the docs: run an attribution component first.")
    if key is None:
        if len(keys) > 1:
            raise ValueError(f"Several attribution methods are stored; pick one with key=. Available keys: {keys}")
        key = keys[0]
    if key not in keys:
        raise ValueError(f"No attributions for key {key!r}. Available keys: {keys}")
    by_key = [(doc, [a for a in attributions if a.method == key]) for doc, attributions in stored]
    selected = [(doc, [a for a in attributions if label is None or a.label == label]) for doc, attributions in by_key]
    if not any(attributions for _, attributions in selected):
        labels = sorted({a.label for _, attributions in by_key for a in attributions})
        raise ValueError(f"No attributions for key {key!r} and label {label!r}. Available labels: {labels}")
    return [(doc, attributions) for doc, attributions in selected if attributions]


def _block(doc: Doc, attribution: Attribution) -> str:
    scores = numpy.asarray(attribution.scores, dtype="float64")
    bound = float(numpy.abs(scores).max(initial=0.0))
    target = _target_range(attribution)
    tokens = []
    for token in doc:
        if target and token.i == target[0]:
            tokens.append('<span class="attrib-target">')
        tokens.append(_token(token.text, float(scores[token.i]), bound))
        if target and token.i == target[1] - 1:
            tokens.append("</span>")
        # Whitespace after a span's last token goes outside the outline.
        tokens.append(html.escape(token.whitespace_))
    return (f'<div class="attrib-block"><div class="attrib-heading">{_heading(doc, attribution)}</div>'
            f'<div class="attrib-tokens">{"".join(tokens)}</div>{_legend(bound)}</div>')


def _target_range(attribution: Attribution) -> Optional[Tuple[int, int]]:
    """The (start, end) tokens to outline: the span or the single token the target belongs to."""
    if attribution.span is not None:
        return attribution.span
    if attribution.token is not None:
        return attribution.token, attribution.token + 1
    return None


def _heading(doc: Doc, attribution: Attribution) -> str:
    parts = [html.escape(attribution.method), f'<span class="attrib-label">{html.escape(attribution.label)}</span>']
    target = _target_range(attribution)
    if target is not None:
        parts.append(f"on “{html.escape(doc[target[0]:target[1]].text)}”")
    parts.append(f"output {attribution.output:.4f}")
    if attribution.delta is not None:
        parts.append(f"delta {attribution.delta:.4f}")
    return " · ".join(parts)


def _token(text: str, score: float, bound: float) -> str:
    strength = abs(score) / bound if bound > 0 else 0.0
    text_colour = "#fff" if strength > LIGHT_TEXT_FROM else "#000"
    return (f'<span class="attrib-token" style="background: {colour(score, bound)}; color: {text_colour}" '
            f'title="{score:.4f}">{html.escape(text)}</span>')


def colour(score: float, bound: float) -> str:
    """The CSS colour of `score` on a scale symmetric around 0 reaching full hue at ±`bound`: white at 0,
    towards red for negative, towards blue for positive."""
    strength = min(abs(score) / bound, 1.0) if bound > 0 else 0.0
    hue = NEGATIVE_RGB if score < 0 else POSITIVE_RGB
    r, g, b = (round(n + (h - n) * strength) for n, h in zip(NEUTRAL_RGB, hue))
    return f"rgb({r}, {g}, {b})"


def _legend(bound: float) -> str:
    """The scale of a block: its colours from -`bound` through 0 to +`bound`."""
    gradient = f"linear-gradient(to right, {colour(-1, 1)}, {colour(0, 1)}, {colour(1, 1)})"
    return (f'<div class="attrib-legend"><div class="attrib-scale" style="background: {gradient}"></div>'
            f'<div class="attrib-scale-labels"><span>{-bound:.4f}</span><span>0</span>'
            f'<span>{bound:.4f}</span></div></div>')


def render_interaction(interactions: Union[Interaction, Iterable[Interaction]], *, wordpieces: bool = False,
                       page: bool = False, jupyter: Optional[bool] = None) -> str:
    """HTML heatmaps of token × token interactions: a's tokens down the rows, b's along the columns, each
    cell on the diverging scale of `render` (red negative, white at 0, blue positive) normalised by the
    largest |cell| of its matrix, its value in the tooltip; the last column and row hold each token's
    score (row and column sums). `wordpieces=True` shows the wordpiece matrix instead (special tokens
    included). Text is escaped; `page` and `jupyter` as for `render`."""
    interactions = [interactions] if isinstance(interactions, Interaction) else list(interactions)
    markup = "\n".join(_heatmap(interaction, wordpieces) for interaction in interactions)
    markup = PAGE.format(css=CSS, body=markup) if page else f"<style>{CSS}</style>\n{markup}"
    if jupyter or (jupyter is None and is_in_jupyter()):
        from IPython.display import HTML, display

        display(HTML(f'<span class="tex2jax_ignore">{markup}</span>'))
    return markup


def _interaction_axes(interaction: Interaction, wordpieces: bool) -> Tuple[numpy.ndarray, Sequence[str], Sequence[str]]:
    if wordpieces:
        return numpy.asarray(interaction.wordpiece_matrix, dtype="float64"), interaction.wordpieces_a, interaction.wordpieces_b
    return numpy.asarray(interaction.matrix, dtype="float64"), interaction.tokens_a, interaction.tokens_b


def _interaction_heading(interaction: Interaction, matrix: numpy.ndarray) -> str:
    parts = [interaction.method, f"s(a, b) {interaction.output:.4f}", f"Σ {float(matrix.sum()):.4f}"]
    if interaction.error is not None:
        parts.append(f"error {interaction.error:.2e}")
    return " · ".join(parts)


def _heatmap(interaction: Interaction, wordpieces: bool) -> str:
    matrix, rows, columns = _interaction_axes(interaction, wordpieces)
    bound = float(numpy.abs(matrix).max(initial=0.0))

    def cell(value: float) -> str:
        return f'<td style="background: {colour(value, bound)}" title="{value:.4f}"></td>'

    head = "".join(f"<th>{html.escape(text)}</th>" for text in columns)
    body = [f'<tr><th>{html.escape(text)}</th>{"".join(cell(v) for v in row)}'
            f'<td class="attrib-sum" title="{row.sum():.4f}">{row.sum():.2f}</td></tr>'
            for text, row in zip(rows, matrix)]
    sums = "".join(f'<td class="attrib-sum" title="{v:.4f}">{v:.2f}</td>' for v in matrix.sum(0))
    return (f'<div class="attrib-block"><div class="attrib-heading">{html.escape(_interaction_heading(interaction, matrix))}</div>'
            f'<table class="attrib-heatmap"><thead><tr><th></th>{head}<th class="attrib-sum">Σ</th></tr></thead>'
            f'<tbody>{"".join(body)}<tr><th class="attrib-sum">Σ</th>{sums}<td></td></tr></tbody></table>'
            f"{_legend(bound)}</div>")


def interaction_figure(interaction: Interaction, *, wordpieces: bool = False, ax=None):
    """A matplotlib heatmap of the interaction (a's tokens down, b's across, ``RdBu`` symmetric around 0,
    a colour bar, the similarity and the completeness error in the title), as the paper's figures show
    it. Returns the Figure; ``.savefig("pair.png")`` writes a PNG. Needs matplotlib."""
    from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state

    matrix, rows, columns = _interaction_axes(interaction, wordpieces)
    if ax is None:
        ax = Figure(figsize=(1.5 + 0.45 * len(columns), 1.5 + 0.45 * len(rows))).subplots()
    bound = float(numpy.abs(matrix).max(initial=0.0)) or 1.0
    image = ax.imshow(matrix, cmap="RdBu", vmin=-bound, vmax=bound)
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=90)
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_title(_interaction_heading(interaction, matrix), fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.figure.tight_layout()
    return ax.figure
