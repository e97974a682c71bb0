"""Train the masked LM that `attr_input_marginalization` draws its candidates from (Kim et al. 2020 use a
pre-trained BERT MLM; no package here ships a masked-LM head for offline use).

The model is a `BertForMaskedLM` whose encoder is the base transformer's (for the project the installed
all-MiniLM-L6-v2), so its wordpiece vocabulary is the explained pipeline's, with the decoder tied to the
word embeddings. The prediction head (its dense transform, LayerNorm and output bias) starts untrained; it
is trained with the last `--train-layers` encoder layers (all by default, −1) on the text of the DocBins
or TSVs given; the word embeddings (and so the tied decoder: the vocabulary's geometry stays the base
model's) stay frozen. On the demo's 360 SST-2 sentences (2 CPU cores) the held-out masked-token accuracy
went 0 → 0.120 in 200 steps at 2e-4 with all six layers (83 s), against 0.033 with the head and the last
layer alone (300 steps at 5e-4, 65 s) and 0.043 with the head alone: a sentence encoder's top layers have
to learn again to predict words, more than the head can do on top of them.

Masking: 15% of each text's wordpieces (at least one; never [CLS]/[SEP]) become [MASK], always [MASK]
(not BERT's 80/10/10): input marginalization only ever asks the model about masked positions. A seeded
held-out tenth of the texts, with fixed masks, gives the masked-token accuracy and loss printed before
and after training.

Inputs: ``.spacy`` DocBins (each doc's text) or tab-separated files with a header row (the last column,
GLUE's sentence column). Saved with `save_pretrained` with the base model's tokenizer; set the component's
``mlm`` to the output directory.

    python scripts/train_mlm.py assets/sst2_demo_train.tsv --output training/mlm [--steps 200]
"""

import random
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import spacy
import torch
import typer
from spacy.tokens import DocBin
from wasabi import msg

from _convert import read_tsv
from spacy_attrib.training import transformer_name

MASK_RATE = 0.15


def read_texts(paths: Sequence[Path]) -> List[str]:
    """The texts of DocBins (``.spacy``) and TSVs (the last column, after the header row)."""
    texts: List[str] = []
    vocab = spacy.blank("en").vocab
    for path in paths:
        if not path.is_file():
            msg.fail(f"Input not found (or not a file): {path}", exits=1)
        if path.suffix == ".spacy":
            texts.extend(doc.text for doc in DocBin().from_disk(path).get_docs(vocab))
        else:
            texts.extend(row[-1] for row in read_tsv(path)[1:] if row)
    return [text for text in texts if text.strip()]


def masked_batch(tokenizer, texts: Sequence[str], rng: random.Random, max_length: int) -> Dict[str, torch.Tensor]:
    """The texts tokenized, MASK_RATE of each one's wordpieces masked (at least one); `labels` holds the
    original ids there and -100 elsewhere."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                        return_special_tokens_mask=True)
    special = encoded.pop("special_tokens_mask").bool() | ~encoded["attention_mask"].bool()
    labels = torch.full_like(encoded["input_ids"], -100)
    for row in range(len(texts)):
        candidates = [i for i in range(special.shape[1]) if not special[row, i]]
        if not candidates:
            continue
        for i in rng.sample(candidates, max(1, round(MASK_RATE * len(candidates)))):
            labels[row, i] = encoded["input_ids"][row, i]
            encoded["input_ids"][row, i] = tokenizer.mask_token_id
    encoded["labels"] = labels
    return encoded


def masked_logits(model, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The prediction head's logits at the masked positions only, and the original ids there: the
    vocabulary projection at every position would cost 7 times as much for nothing."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    hidden = model.bert(**inputs).last_hidden_state
    masked = batch["labels"] != -100
    return model.cls(hidden[masked]), batch["labels"][masked]


def evaluate(model, batches: Sequence[Dict[str, torch.Tensor]]) -> Tuple[float, float]:
    """Mean loss and accuracy over the masked wordpieces of `batches`."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            logits, targets = masked_logits(model, batch)
            total_loss += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += len(targets)
    return total_loss / max(count, 1), correct / max(count, 1)


def train_mlm(inputs: Sequence[Path], output: Path, base: str = "all-MiniLM-L6-v2", steps: int = 200,
              batch_size: int = 16, learn_rate: float = 2e-4, train_layers: int = -1, max_length: int = 128,
              seed: int = 0) -> Dict[str, float]:
    """Train and save the masked LM; returns the held-out loss and accuracy before and after, the seconds
    taken and the sizes."""
    from transformers import AutoTokenizer, BertForMaskedLM

    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    texts = read_texts(inputs)
    if len(texts) < 2:
        msg.fail(f"Need at least 2 texts to train and hold out, got {len(texts)}", exits=1)
    rng.shuffle(texts)
    n_held_out = max(1, len(texts) // 10)
    held_out, train = texts[:n_held_out], texts[n_held_out:]
    path = transformer_name(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForMaskedLM.from_pretrained(path)
    layers = model.bert.encoder.layer
    if train_layers == -1:
        train_layers = len(layers)
    if not 0 <= train_layers <= len(layers):
        msg.fail(f"--train-layers must be -1 (all) or between 0 and {len(layers)}, got {train_layers}", exits=1)
    model.requires_grad_(False)
    trained = [model.cls.predictions.transform, *layers[len(layers) - train_layers:]]
    for module in trained:
        module.requires_grad_(True)
    model.cls.predictions.bias.requires_grad_(True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    evaluation_rng = random.Random(seed + 1)
    evaluation = [masked_batch(tokenizer, held_out[i:i + batch_size], evaluation_rng, max_length)
                  for i in range(0, len(held_out), batch_size)]
    loss_before, accuracy_before = evaluate(model, evaluation)
    optimizer = torch.optim.AdamW(parameters, lr=learn_rate)
    order: List[str] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(train, len(train))
        texts_now, order = order[:batch_size], order[batch_size:]
        model.train()
        loss = torch.nn.functional.cross_entropy(*masked_logits(model, masked_batch(tokenizer, texts_now, rng, max_length)))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
    loss_after, accuracy_after = evaluate(model, evaluation)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    return {"loss_before": loss_before, "loss_after": loss_after, "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after, "seconds": time.perf_counter() - started, "texts": len(train),
            "held_out": len(held_out), "trained_parameters": sum(p.numel() for p in parameters)}


def main(
    inputs: List[Path] = typer.Argument(..., help="DocBins (.spacy) or TSVs (text in the last column, header row)"),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to save the masked LM and tokenizer to"),
    base: str = typer.Option("all-MiniLM-L6-v2", "--base", help="The base transformer (alias, HF name or path)"),
    steps: int = typer.Option(200, "--steps", help="Training steps"),
    batch_size: int = typer.Option(16, "--batch-size", help="Texts per step"),
    learn_rate: float = typer.Option(2e-4, "--learn-rate", help="AdamW learning rate"),
    train_layers: int = typer.Option(-1, "--train-layers", help="Last encoder layers trained with the head (-1: all)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the masks, the order and the head's init"),
):
    result = train_mlm(inputs, output, base, steps, batch_size, learn_rate, train_layers, seed=seed)
    msg.good(f"Saved the masked LM to {output} ({result['texts']} texts, {result['trained_parameters']:,} "
             f"parameters trained, {steps} steps, {result['seconds']:.0f} s)")
    msg.info(f"Held-out masked-token accuracy {result['accuracy_before']:.3f} → {result['accuracy_after']:.3f}, "
             f"loss {result['loss_before']:.3f} → {result['loss_after']:.3f} ({result['held_out']} texts)")


if __name__ == "__main__":
    typer.run(main)
