"""A batch ML script: train a model with a streamed progress report, then score a dataset with
every core, the model loaded once per worker.

    python examples/batch_inference.py [--rows 200000] [--epochs 20] [--workers N]

The model is a logistic regression in plain numpy (swap in scikit-learn, torch...: the shape of
the script stays). ``train`` streams one chunk per epoch (the loss), its last chunk the weights;
the scoring pool's workers load those weights in ``initialize()``, and ``pool.map`` sends the
rows in batches, with a progress bar when tqdm is installed (``snakepit-pool[progress]``).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

from snakepit import BaseAdapter, Pool, StreamChunk, tool


class Trainer(BaseAdapter):
    @tool(description="fit a logistic regression by gradient descent, one chunk per epoch")
    def train(self, features: np.ndarray, labels: np.ndarray, epochs: int = 20, rate: float = 0.5):
        weights = np.zeros(features.shape[1])
        for epoch in range(1, epochs + 1):
            predicted = 1 / (1 + np.exp(-features @ weights))
            loss = -np.mean(labels * np.log(predicted + 1e-12) + (1 - labels) * np.log(1 - predicted + 1e-12))
            weights -= rate * features.T @ (predicted - labels) / len(labels)
            yield {"epoch": epoch, "epochs": epochs, "loss": float(loss)}
        yield StreamChunk(data={"weights": weights}, is_final=True)


class Scorer(BaseAdapter):
    def __init__(self, weights_path: str) -> None:
        self.weights_path = weights_path

    def initialize(self) -> None:  # once per worker: this is where a real model loads
        self.weights = np.load(self.weights_path)

    @tool(description="the probability that each row is positive")
    def score(self, rows: list[list[float]]) -> list[float]:
        return (1 / (1 + np.exp(-np.asarray(rows) @ self.weights))).tolist()


def make_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 8))
    truth = np.array([1.5, -2.0, 0.5, 0.0, 1.0, -0.5, 2.0, -1.0])
    labels = (features @ truth + rng.normal(scale=0.5, size=rows) > 0).astype(float)
    return features, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    opts = parser.parse_args()
    features, labels = make_data(opts.rows)

    with Pool(Trainer, size=1) as pool:
        stream = pool.stream("train", features=features, labels=labels, epochs=opts.epochs)
        for event in stream:
            if "loss" in event:
                print(f"epoch {event['epoch']:>3}/{event['epochs']}  loss {event['loss']:.4f}")
            else:
                weights = event["weights"]

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.npy"
        np.save(path, weights)
        with Pool(Scorer, size=opts.workers, adapter_args={"weights_path": str(path)}) as pool:
            started = time.perf_counter()
            starts = range(0, len(features), 500)
            batches = (features[i : i + 500].tolist() for i in starts)
            progress = importlib.util.find_spec("tqdm") is not None
            results = pool.map("score", batches, param="rows", progress=progress, total=len(starts))
            scores = np.concatenate(list(results))
        accuracy = float(np.mean((scores > 0.5) == labels))
        print(f"scored {len(scores):,} rows in {time.perf_counter() - started:.2f} s: accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
