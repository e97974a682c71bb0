"""Draw the small SST-2 samples that the demo (`spacy project run demo`) trains and evaluates on (run once; output committed).

    python scripts/make_demo_data.py --source /path/to/glue/SST-2

reads ``train.tsv`` and ``dev.tsv`` (GLUE SST-2: ``label<TAB>sentence`` with a header line, 1 = positive)
and writes balanced, seeded samples to ``assets/sst2_demo_train.tsv`` and ``assets/sst2_demo_dev.tsv`` in
the same format. Training rows are limited to whole sentences of moderate length (SST-2 train is mostly
sub-sentence phrases); the demo reads only these files.
"""

import argparse
import csv
import random
from pathlib import Path
from typing import Dict, List, Tuple

ASSETS = Path(__file__).resolve().parent.parent / "assets"
Row = Tuple[int, str]


def read_tsv(path: Path) -> List[Row]:
    with path.open(encoding="utf8", newline="") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(int(label), text) for label, text in rows[1:]]


def balanced_sample(rows: List[Row], n: int, min_words: int, max_words: int, seed: int) -> List[Row]:
    """`n` distinct rows, half of each label, `min_words`..`max_words` words long, in shuffled order."""
    by_label: Dict[int, List[Row]] = {0: [], 1: []}
    seen = set()
    for label, text in rows:
        if min_words <= len(text.split()) <= max_words and text not in seen:
            seen.add(text)
            by_label[label].append((label, text))
    rng = random.Random(seed)
    sample = rng.sample(by_label[1], n // 2) + rng.sample(by_label[0], n - n // 2)
    rng.shuffle(sample)
    return sample


def write_tsv(path: Path, rows: List[Row]) -> None:
    with path.open("w", encoding="utf8") as file:
        file.write("label\tsentence\n")
        for label, text in rows:
            if "\t" in text or "\n" in text:
                raise ValueError(f"row cannot be written as TSV: {text!r}")
            file.write(f"{label}\t{text}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-dev", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ASSETS.mkdir(exist_ok=True)
    train = balanced_sample(read_tsv(args.source / "train.tsv"), args.n_train, 6, 30, args.seed)
    dev = balanced_sample(read_tsv(args.source / "dev.tsv"), args.n_dev, 4, 25, args.seed)
    write_tsv(ASSETS / "sst2_demo_train.tsv", train)
    write_tsv(ASSETS / "sst2_demo_dev.tsv", dev)
    print(f"wrote {len(train)} training and {len(dev)} dev rows to {ASSETS}")


if __name__ == "__main__":
    main()
