"""The bar the sentiment recipe must clear: TF-IDF + logistic regression (scikit-learn) on the
same fixed split of Rotten Tomatoes sentences (run by hand, after `make sentiment-minilm` or
`python train/sentiment_data.py runs/data`).

    .venv/bin/python benchmarks/sentiment_baseline.py [DATA_DIR]   # default runs/data

Word 1-2-grams and character 2-5-grams (sublinear TF, the usual strong linear baseline for
short reviews), C chosen by 5-fold cross-validation on the training sentences only; prints the
held-out accuracy and macro-F1 and its labels for the recipe's hand-written sentences.
"""

from __future__ import annotations

import csv
import pathlib
import sys

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline, make_union

SENTENCES = ["I loved every minute of it.", "a gorgeous, witty, seductive movie.",
             "the plot is nothing but boilerplate clichés from start to finish.",
             "Not my cup of tea, and far too long.", "What a waste of a talented cast."]


def read(path: pathlib.Path) -> tuple[list[str], list[str]]:
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  return [r["text"] for r in rows], [r["label"] for r in rows]


def main(data_dir: str = "runs/data") -> None:
  train_x, train_y = read(pathlib.Path(data_dir) / "rotten_tomatoes_train.csv")
  test_x, test_y = read(pathlib.Path(data_dir) / "rotten_tomatoes_test.csv")
  features = make_union(
      TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
      TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
  search = GridSearchCV(make_pipeline(features, LogisticRegression(max_iter=2000)),
                        {"logisticregression__C": [0.5, 1, 2, 4, 8]}, cv=5, n_jobs=1)
  search.fit(train_x, train_y)
  predicted = search.predict(test_x)
  print(f"TF-IDF + logistic regression (C={search.best_params_['logisticregression__C']}): "
        f"held-out accuracy {accuracy_score(test_y, predicted):.1%}, macro-F1 "
        f"{f1_score(test_y, predicted, average='macro'):.1%} on {len(test_y)} sentences "
        f"({len(train_y)} to train on)")
  for text, label in zip(SENTENCES, search.predict(SENTENCES)):
    print(f"  {label:8s} {text}")


if __name__ == "__main__":
  main(*sys.argv[1:])
