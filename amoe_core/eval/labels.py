"""Labelled features of a train/test split, as the classifiers on frozen features (kNN, linear probe) take them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def split_labels(train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(train labels, test labels) as int64 arrays and the number of classes both splits cover (max label + 1)."""
    train = np.asarray(train_labels, dtype=np.int64)
    test = np.asarray(test_labels, dtype=np.int64)
    return train, test, int(max(train.max(), test.max()) + 1)


@dataclass(frozen=True)
class LabelledFeatures:
    """Train and test features [n, d] with their class labels: what a classifier is fit on and scored on."""

    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray

    def labels(self) -> tuple[np.ndarray, np.ndarray, int]:
        return split_labels(self.train_labels, self.test_labels)
