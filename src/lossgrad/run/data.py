"""Data sets of ``lossgrad run``: scikit-learn's digits and diabetes, or the user's own file.

Every data set is split once, with a fixed split seed, into 60% training, 20% validation and
20% test rows, so that the training seeds vary only the models. Class labels are split
stratified.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .config import RunError

__all__ = ["Dataset", "load_classification", "load_regression"]

SPLIT_SEED = 0
# Each class needs a row in each of the three splits and two in training.
MIN_ROWS_PER_CLASS = 4
MAX_CLASSES = 1000


@dataclass(frozen=True)
class Dataset:
    """One data set split into training, validation and test tensors.

    ``x_*`` are float32 rows of features (N x F). ``y_*`` are int64 class indices for
    classification and float32 targets for regression.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None = None

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: str) -> Dataset:
        """Return a copy with every tensor on device."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        return Dataset(self.name, **moved, num_classes=self.num_classes)


# 1. Reading the user's file.


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise RunError(f"--data: cannot read {path} as .npz: {error}") from None
    with archive:
        missing = [name for name in ("x", "y") if name not in archive.files]
        if missing:
            raise RunError(
                f"--data: {path} has no array named {' or '.join(missing)}; expected arrays "
                f"x and y, found {', '.join(archive.files) or 'none'}"
            )
        x, y = archive["x"], archive["y"]
    if x.ndim < 2:
        raise RunError(f"--data: array x must have one row per example, got shape {x.shape}")
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise RunError(f"--data: array y must be one-dimensional, got shape {y.shape}")
    return x.reshape(len(x), -1), y.reshape(-1)


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise RunError(f"--data: {path} is not a text CSV file") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]

    if len(rows) < 2:
        raise RunError(f"--data: {path} needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    if label_column not in header:
        raise RunError(
            f"--data: {path} has no column {label_column!r} (columns: {', '.join(header)}); "
            "name the label column with --label-column"
        )
    if len(header) < 2:
        raise RunError(f"--data: {path} has only the label column; expected feature columns too")

    label_index = header.index(label_column)
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise RunError(
                f"--data: {path} line {line}: expected {len(header)} fields, got {len(row)}"
            )
        for column, cell in enumerate(row):
            try:
                values[line - 2, column] = float(cell)
            except ValueError:
                raise RunError(
                    f"--data: {path} line {line}, column {header[column]!r}: expected a "
                    f"number, got {cell!r}"
                ) from None

    y = values[:, label_index]
    x = np.delete(values, label_index, axis=1)
    return x, y


def _read_user_file(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Read x (N x F float64) and y (N) from an .npz or .csv file, checking the values."""
    if not path.exists():
        raise RunError(f"--data: file not found: {path}")
    if not path.is_file():
        raise RunError(f"--data: expected a file, got {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(path)
    elif suffix == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        raise RunError(f"--data: expected a .npz or .csv file, got {path.name!r}")
    if len(x) != len(y):
        raise RunError(f"--data: x has {len(x)} rows but y has {len(y)}")
    try:
        x = x.astype(np.float64)
        y = y.astype(np.float64)
    except (TypeError, ValueError):
        raise RunError(f"--data: {path} contains non-numeric values; expected numbers") from None
    if not np.isfinite(x).all():
        raise RunError(f"--data: {path} has NaN or infinite features")
    if not np.isfinite(y).all():
        raise RunError(f"--data: {path} has NaN or infinite labels")
    if x.shape[1] == 0:
        raise RunError(f"--data: {path} has no feature columns")
    return x, y


# 2. Splitting and scaling.


def _split(n: int, stratify: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return index arrays of a 60/20/20 training/validation/test split."""
    indices = np.arange(n)
    rest, test = train_test_split(
        indices, test_size=0.2, random_state=SPLIT_SEED, stratify=stratify
    )
    train, val = train_test_split(
        rest, test_size=0.25, random_state=SPLIT_SEED,
        stratify=None if stratify is None else stratify[rest],
    )
    return train, val, test


def _standardize(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Scale features to zero mean and unit variance over the training rows."""
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0
    return (x - mean) / std


def _class_labels(y: np.ndarray) -> np.ndarray:
    """Check that y contains class indices 0..K-1, each with enough rows, and return int64."""
    if not np.all(y == np.round(y)):
        raise RunError("--data: labels must be integer class indices 0..K-1, got fractions")
    if y.min() < 0:
        raise RunError(f"--data: labels must be class indices 0..K-1, got {int(y.min())}")
    if y.max() >= MAX_CLASSES:
        raise RunError(
            f"--data: labels must be class indices below {MAX_CLASSES}, got {int(y.max())}"
        )
    labels = y.astype(np.int64)
    counts = np.bincount(labels)
    if len(counts) < 2:
        raise RunError("--data: expected at least two classes, got one")
    for label, count in enumerate(counts):
        if count < MIN_ROWS_PER_CLASS:
            raise RunError(
                f"--data: labels must be 0..{len(counts) - 1} with at least "
                f"{MIN_ROWS_PER_CLASS} rows each, but class {label} has {count}"
            )
    return labels


def _tensors(name: str, x: np.ndarray, y: np.ndarray, splits, y_dtype, **extra) -> Dataset:
    parts = []
    for rows in splits:
        parts.append(torch.tensor(x[rows], dtype=torch.float32))
        parts.append(torch.tensor(y[rows], dtype=y_dtype))
    return Dataset(name, *parts, **extra)


# 3. Public loaders.


def load_classification(data: Path | None, label_column: str) -> Dataset:
    """Load digits (pixels scaled to [0, 1]) or the user's file (standardized features)."""
    if data is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.data / 16.0
        y = digits.target.astype(np.int64)
        splits = _split(len(y), y)
        return _tensors("digits", x, y, splits, torch.int64, num_classes=10)
    x, y = _read_user_file(data, label_column)
    labels = _class_labels(y)
    splits = _split(len(labels), labels)
    x = _standardize(x, splits[0])
    return _tensors(data.name, x, labels, splits, torch.int64,
                    num_classes=int(labels.max()) + 1)


def load_regression(data: Path | None, label_column: str) -> Dataset:
    """Load diabetes or the user's file, with standardized features and raw targets."""
    if data is None:
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        name = "diabetes"
    else:
        x, y = _read_user_file(data, label_column)
        name = data.name
    if len(y) < 10:
        raise RunError(f"--data: regression needs at least 10 rows, got {len(y)}")
    splits = _split(len(y), None)
    x = _standardize(x, splits[0])
    return _tensors(name, x, y, splits, torch.float32)
