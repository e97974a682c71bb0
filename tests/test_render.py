"""HTML rendering of stored attributions: escaping, colours, selection, the page, Jupyter, the server, and
what Chromium actually draws."""

import importlib
import re
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path
from typing import List, Optional, Tuple
from wsgiref import simple_server
from wsgiref.util import setup_testing_defaults

import numpy
import pytest
import spacy
from spacy.tokens import Doc

from spacy_attrib.attribution import Attribution, install_extensions, set_attribution
from spacy_attrib.render import NEGATIVE_RGB, POSITIVE_RGB, make_app, render, serve

# Looked up by module name: should the package export the function `render`, `spacy_attrib.render` as
# an attribute would be that function rather than the module.
render_module = importlib.import_module("spacy_attrib.render")
WHITE = "rgb(255, 255, 255)"


def rgb(colour: Tuple[int, int, int]) -> str:
    return "rgb({}, {}, {})".format(*colour)


def make_doc(text: str) -> Doc:
    install_extensions()
    return spacy.blank("en")(text)


def store(doc: Doc, scores, method: str = "integrated_gradients", label: str = "POS", **fields) -> Doc:
    """Record a hand-made result on `doc`, as an attribution component would."""
    set_attribution(doc, Attribution(
        method=method, label=label, scores=numpy.asarray(scores, dtype="float32"), wordpieces=[],
        wordpiece_scores=numpy.zeros(0, dtype="float32"), alignment=[[] for _ in doc],
        output=fields.pop("output", -0.25), **fields))
    return doc


class Block:
    def __init__(self) -> None:
        self.heading = ""
        self.tokens: List[Tuple[str, str, str]] = []  # (text, background, title)
        self.outlined: List[str] = []
        self.text = ""  # the tokens line as it reads, whitespace included


class BlockParser(HTMLParser):
    """The blocks of `render`'s markup, read the way a browser would (entities unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: List[Block] = []
        self.open: List[str] = []  # the class of each open element
        self.token: Optional[List[str]] = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        css_class = attrs.get("class", "")
        self.open.append(css_class)
        if css_class == "attrib-block":
            self.blocks.append(Block())
        elif css_class == "attrib-token":
            background = re.search(r"background: (rgb\([^)]*\))", attrs["style"]).group(1)
            self.token = ["", background, attrs["title"]]

    def handle_endtag(self, tag):
        if self.open.pop() == "attrib-token":
            text, background, title = self.token
            self.blocks[-1].tokens.append((text, background, title))
            if "attrib-target" in self.open:
                self.blocks[-1].outlined.append(text)
            self.token = None

    def handle_data(self, data):
        if self.token is not None:
            self.token[0] += data
        if "attrib-heading" in self.open:
            self.blocks[-1].heading += data
        if "attrib-tokens" in self.open:
            self.blocks[-1].text += data


def blocks_of(markup: str) -> List[Block]:
    parser = BlockParser()
    parser.feed(markup)
    return parser.blocks


def test_text_and_labels_are_escaped():
    doc = make_doc("Hi <script>alert(1)</script> there")
    store(doc, numpy.ones(len(doc)), label="<b>PER</b>", span=(1, 6))
    markup = render(doc, jupyter=False)
    assert "<script" not in markup.lower() and "<b>" not in markup
    # the span's text in the heading, the label, and every token on its own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert "&lt;b&gt;PER&lt;/b&gt;" in markup
    assert '">&lt;</span>' in markup and '">alert(1)&lt;/script</span>' in markup
    (block,) = blocks_of(markup)
    assert block.text == doc.text
    assert "<script>alert(1)</script>" in block.heading and "<b>PER</b>" in block.heading


def test_colours_and_tooltips():
    doc = make_doc("great fine meh so awful")
    scores = [2.0, 0.0, -1.0, 0.42131, -2.0]
    (block,) = blocks_of(render(store(doc, scores), jupyter=False))
    backgrounds = [background for _, background, _ in block.tokens]
    assert backgrounds[0] == rgb(POSITIVE_RGB)  # the most positive: the full positive hue
    assert backgrounds[1] == WHITE
    assert backgrounds[4] == rgb(NEGATIVE_RGB)  # the most negative: the full negative hue
    # -1 is half way to red: red stays full, green and blue drop half way
    assert backgrounds[2] == "rgb(234, 147, 148)"
    assert [title for _, _, title in block.tokens] == ["2.0000", "0.0000", "-1.0000", "0.4213", "-2.0000"]
    assert [text for text, _, _ in block.tokens] == [t.text for t in doc]
    assert block.text == doc.text  # each token's trailing whitespace kept


def test_scale_is_symmetric_around_zero():
    """Normalised by the largest |score|: +1 next to -2 gets half the positive hue, not all of it."""
    doc = make_doc("good terrible")
    markup = render(store(doc, [1.0, -2.0]), jupyter=False)
    (block,) = blocks_of(markup)
    assert [background for _, background, _ in block.tokens] == ["rgb(143, 187, 218)", rgb(NEGATIVE_RGB)]
    legend = re.search(r'class="attrib-scale-labels">(.*?)</div>', markup).group(1)
    assert re.findall(r"<span>([^<]*)</span>", legend) == ["-2.0000", "0", "2.0000"]


def test_all_zero_scores_are_white():
    doc = make_doc("nothing here")
    (block,) = blocks_of(render(store(doc, [0.0, 0.0]), jupyter=False))
    assert [background for _, background, _ in block.tokens] == [WHITE, WHITE]


def test_heading_shows_method_label_output_and_delta():
    doc = make_doc("a b")
    store(doc, [1.0, 0.5], output=-0.25, extras={"delta": 0.00123})
    store(doc, [1.0, 0.5], label="NEG", output=-1.5)
    pos, neg = blocks_of(render(doc, jupyter=False))
    assert pos.heading == "integrated_gradients · POS · output -0.2500 · delta 0.0012"
    assert neg.heading == "integrated_gradients · NEG · output -1.5000"


def test_key_must_be_chosen_when_several_are_stored():
    doc = make_doc("a b")
    store(doc, [1.0, 0.5], method="integrated_gradients")
    store(doc, [0.1, 0.2], method="saliency")
    with pytest.raises(ValueError, match=r"Available keys: \['integrated_gradients', 'saliency'\]"):
        render(doc, jupyter=False)
    with pytest.raises(ValueError, match=r"'smoothgrad'.*Available keys: \['integrated_gradients', 'saliency'\]"):
        render(doc, "smoothgrad", jupyter=False)
    (block,) = blocks_of(render(doc, "saliency", jupyter=False))
    assert block.heading.startswith("saliency · POS")
    assert [title for _, _, title in block.tokens] == ["0.1000", "0.2000"]


def test_label_selection():
    doc = make_doc("a b")
    store(doc, [1.0, 0.5], label="POS")
    store(doc, [-1.0, 0.5], label="NEG")
    assert [b.heading.split(" · ")[1] for b in blocks_of(render(doc, jupyter=False))] == ["POS", "NEG"]
    (block,) = blocks_of(render(doc, label="NEG", jupyter=False))
    assert block.heading.split(" · ")[1] == "NEG"
    assert block.tokens[0][2] == "-1.0000"
    with pytest.raises(ValueError, match=r"'MIXED'.*Available labels: \['NEG', 'POS'\]"):
        render(doc, label="MIXED", jupyter=False)


def test_one_block_per_span_and_token_target():
    doc = make_doc("Alex Smith met Kim in Paris")
    store(doc, [0.1] * 6, label="VERB", token=2)
    store(doc, [0.9, 0.8, 0, 0, 0, 0], label="PER", span=(0, 2))
    store(doc, [0, 0, 0, 0.7, 0, 0], label="PER", span=(3, 4))
    store(doc, [0, 0, 0, 0, 0.2, 0.6], label="LOC", span=(5, 6))
    blocks = blocks_of(render(doc, jupyter=False))
    assert [b.outlined for b in blocks] == [["met"], ["Alex", "Smith"], ["Kim"], ["Paris"]]
    assert [b.heading.split(" · ")[1:3] for b in blocks] == [
        ["VERB", "on “met”"], ["PER", "on “Alex Smith”"], ["PER", "on “Kim”"], ["LOC", "on “Paris”"]]
    assert all(b.text == doc.text for b in blocks)
    (loc,) = blocks_of(render(doc, label="LOC", jupyter=False))
    assert loc.tokens[5][1] == rgb(POSITIVE_RGB)


def test_docs_without_results_are_skipped_unless_none_has_one():
    explained, plain = store(make_doc("good film"), [1.0, 0.2]), make_doc("no result")
    (block,) = blocks_of(render([plain, explained, plain], jupyter=False))
    assert [text for text, _, _ in block.tokens] == ["good", "film"]
    with pytest.raises(ValueError, match="No attributions are stored"):
        render([plain], jupyter=False)
    with pytest.raises(ValueError, match="No attributions are stored"):
        render([], jupyter=False)


def test_page_is_self_contained():
    doc = store(make_doc("good film"), [1.0, -0.2])
    page = render(doc, page=True, jupyter=False)
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page and "<style>" in page
    assert not re.search(r"https?://|<link|<script|src=|@import", page)
    assert blocks_of(page)[0].tokens == blocks_of(render(doc, jupyter=False))[0].tokens
    minified = render(doc, page=True, minify=True, jupyter=False)
    assert "\n" not in minified
    assert blocks_of(minified)[0].tokens == blocks_of(page)[0].tokens


def test_minify_keeps_the_newlines_in_the_text():
    doc = make_doc("one\ntwo")
    (block,) = blocks_of(render(store(doc, [1.0] * len(doc)), minify=True, jupyter=False))
    assert block.text == "one\ntwo"


@pytest.fixture
def fake_ipython(monkeypatch):
    """IPython.display standing in for a notebook: records what is displayed."""
    shown = []
    display_module = types.ModuleType("IPython.display")
    display_module.HTML = lambda data: ("HTML", data)
    display_module.display = shown.append
    ipython = types.ModuleType("IPython")
    ipython.display = display_module
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    return shown


def test_jupyter_displays_and_returns_the_markup(fake_ipython, monkeypatch):
    doc = store(make_doc("good film"), [1.0, -0.2])
    markup = render(doc, jupyter=True)
    assert fake_ipython == [("HTML", f'<span class="tex2jax_ignore">{markup}</span>')]
    assert render(doc, jupyter=False) == markup and len(fake_ipython) == 1
    monkeypatch.setattr(render_module, "is_in_jupyter", lambda: True)
    assert render(doc) == markup and len(fake_ipython) == 2
    monkeypatch.setattr(render_module, "is_in_jupyter", lambda: False)
    assert render(doc) == markup and len(fake_ipython) == 2


def call_app(app) -> Tuple[str, dict, bytes]:
    environ: dict = {}
    setup_testing_defaults(environ)
    started = {}

    def start_response(status, headers):
        started.update(status=status, headers=dict(headers))

    body = b"".join(app(environ, start_response))
    return started["status"], started["headers"], body


def test_app_serves_the_page():
    page = render(store(make_doc("good café"), [1.0, -0.2]), page=True, jupyter=False)
    status, headers, body = call_app(make_app(page))
    assert status == "200 OK"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.decode("utf-8") == page
    assert headers["Content-Length"] == str(len(body))


def test_serve_serves_the_page_until_interrupted(monkeypatch):
    doc = store(make_doc("good film"), [1.0, -0.2])

    class Server:
        closed = False

        def __init__(self, host, port, app):
            self.host, self.port, self.app = host, port, app
            servers.append(self)

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            self.closed = True

    servers: List[Server] = []
    monkeypatch.setattr(simple_server, "make_server", Server)
    serve(doc, port=8123, host="127.0.0.1")
    (server,) = servers
    assert (server.host, server.port, server.closed) == ("127.0.0.1", 8123, True)
    assert call_app(server.app)[2].decode("utf-8") == render(doc, page=True, jupyter=False)


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); the screenshot test needs it")
    return binary


def test_chromium_draws_the_colours(tmp_path: Path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed; the screenshot test reads the PNG with it")
    binary = chromium()
    doc = make_doc("wonderful neutral dreadful")
    page = render(store(doc, [5.0, 0.0, -5.0]), page=True, jupyter=False)
    # A large font, so each coloured token covers thousands of pixels.
    page = page.replace("</style>", ".attrib-tokens { font-size: 64px; }</style>")
    (tmp_path / "page.html").write_text(page, encoding="utf-8")
    screenshot = tmp_path / "out.png"
    subprocess.run([binary, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={screenshot}", "--window-size=800,600", (tmp_path / "page.html").as_uri()],
                   check=True, capture_output=True, timeout=60)
    pixels = numpy.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3).astype(int)
    saturated = pixels[pixels.max(axis=1) - pixels.min(axis=1) > 60]
    assert len(saturated) > 0.01 * len(pixels), "the screenshot has (almost) no coloured pixels"

    def near(colour) -> int:
        return int((numpy.abs(saturated - numpy.array(colour)).max(axis=1) <= 8).sum())

    # the token backgrounds, not just the small legend bar (its 12px-high gradient has few exact pixels)
    assert near(POSITIVE_RGB) > 2000 and near(NEGATIVE_RGB) > 2000
    assert (pixels == 255).all(axis=1).sum() > 0.5 * len(pixels)  # the page and the 0 token: white
