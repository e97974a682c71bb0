"""scripts/train_mlm.py (the project's `mlm` step) on the tiny BERT: it learns, and what it saves is a masked
LM of the base model's vocabulary that input marginalization accepts."""

import importlib.util
import sys
from pathlib import Path

import numpy
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from conftest import explain, toy_texts
from spacy_attrib import iter_attributions
from spacy_attrib.methods.marginalization import load_masked_lm

ROOT = Path(__file__).resolve().parent.parent


def train_mlm_script():
    # `python scripts/train_mlm.py` puts scripts/ on the import path (for its shared _convert.py): so do we
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("train_mlm", ROOT / "scripts" / "train_mlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_mlm_learns_and_saves_a_masked_lm_of_the_base_vocabulary(tiny_bert, textcat_nlp, tmp_path):
    data = tmp_path / "train.tsv"
    data.write_text("label\tsentence\n" + "".join(f"{int(label == 'POS')}\t{text}\n" for text, label in toy_texts(60)),
                    encoding="utf8")
    output = tmp_path / "mlm"
    result = train_mlm_script().train_mlm([data], output, base=str(tiny_bert), steps=40, learn_rate=5e-3,
                                          train_layers=2)
    assert result["held_out"] == 6 and result["texts"] == 54
    assert result["loss_after"] < result["loss_before"] - 0.3  # measured 3.88 → 3.37
    assert result["accuracy_after"] > result["accuracy_before"]
    model = AutoModelForMaskedLM.from_pretrained(str(output))
    assert AutoTokenizer.from_pretrained(str(output)).get_vocab() == AutoTokenizer.from_pretrained(str(tiny_bert)).get_vocab()
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    base = AutoModelForMaskedLM.from_pretrained(str(tiny_bert))
    # the word embeddings (and so the tied decoder) are the base model's, untouched
    assert torch.equal(model.get_input_embeddings().weight, base.get_input_embeddings().weight)
    _, (doc,) = explain(textcat_nlp, "attr_input_marginalization", ["the film was dull"], mlm=str(output))
    (attribution,) = iter_attributions(doc)
    assert numpy.isfinite(attribution.scores).all() and numpy.abs(attribution.scores).max() > 0
    assert min(attribution.extras["candidates"]) > 1
    assert load_masked_lm(str(output), torch.device("cpu")).vocab == textcat_nlp.get_pipe("transformer").model.tokenizer.get_vocab()
