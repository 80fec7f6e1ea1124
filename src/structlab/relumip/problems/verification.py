"""Benchmark 2: verification of a Fashion-MNIST classifier (784-50-50-10 and deeper).

For a test image ``x0`` of class ``k`` and a radius ``eps``, find the largest misclassification margin

    max  max_{j != k} (y_j - y_k)   s.t.  y = net(x),  ||x - x0||_inf <= eps,  0 <= x <= 1

(pixels scaled to [0, 1] and clipped to it). A positive optimum is an adversarial example; a negative one
proves the network robust on the ball. scikit-learn's 8x8 digits stand in where Fashion-MNIST is absent
(and for fast tests), labelled as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from structlab import data, images
from structlab.relumip.network import ReluNetwork
from structlab.relumip.problems import Dataset, Instance
from structlab.relumip.training import TrainConfig, build_mlp, relu_stability_loss

HIDDEN = (50, 50)  # the paper's classifier 784-50-50-10
EPSILONS = (0.005, 0.01, 0.02)


def dataset(
    source: Literal["fashion-mnist", "digits"] = "fashion-mnist",
    n_train: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Flattened images in [0, 1] (n, 784) and labels; ``n_train`` draws a random subset of the training set.

    ``source="digits"`` uses scikit-learn's digits (8x8, 1,797 images; a fifth is the test set).
    Raises :class:`~structlab.errors.DataNotFoundError` when Fashion-MNIST is not found.
    """
    rng = np.random.default_rng(seed)
    if source == "fashion-mnist":
        x_train, y_train, where = images.load_fashion_mnist("train")
        x_test, y_test, _ = images.load_fashion_mnist("test")
        scale = 255.0
    elif source == "digits":
        x_all, y_all, where = images.load_digits()
        order = rng.permutation(len(x_all))
        n_test = len(x_all) // 5
        x_test, y_test = x_all[order[:n_test]], y_all[order[:n_test]]
        x_train, y_train = x_all[order[n_test:]], y_all[order[n_test:]]
        scale = 16.0
    else:
        raise ValueError(f"source={source!r}: expected 'fashion-mnist' or 'digits'")
    if n_train is not None:
        if not isinstance(n_train, int) or not 0 < n_train <= len(x_train):
            raise ValueError(f"n_train={n_train!r}: expected an int in [1, {len(x_train)}] or None")
        pick = rng.choice(len(x_train), n_train, replace=False)
        x_train, y_train = x_train[pick], y_train[pick]
    n_in = x_train[0].size

    def flat(x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1) / scale).astype(np.float32)

    return Dataset(
        name=f"verification-{source}", task="classification",
        x_train=flat(x_train), y_train=y_train.astype(np.int64),
        x_test=flat(x_test), y_test=y_test.astype(np.int64),
        lower=np.zeros(n_in), upper=np.ones(n_in), source=where,
    )


def train_classifier(ds: Dataset, config: TrainConfig) -> ReluNetwork:
    """Train a classifier on the raw pixels in [0, 1] with ``config``'s levers (L1, RS, clip, dropout).

    Why not :func:`structlab.relumip.train`: it standardises every input by its own standard deviation,
    and a Fashion-MNIST border pixel that is almost always 0 has a standard deviation near 3e-4, so the
    trained network is thousands of times more sensitive to it than to a typical pixel and an L-inf ball
    of radius 0.005 already holds adversarial examples (and ill-conditioned MILPs). Image classifiers
    are trained on pixels as they are; this loop reuses the library's model and RS loss.
    """
    import torch

    if config.task != "classification":
        raise ValueError(f"config.task={config.task!r}: expected 'classification'")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    xt = torch.tensor(ds.x_train, dtype=torch.float32)
    yt = torch.tensor(ds.y_train, dtype=torch.int64)
    module = build_mlp(ds.n_in, ds.n_out, config)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weights = [m.weight for m in module if isinstance(m, torch.nn.Linear)]
    criterion = torch.nn.CrossEntropyLoss()
    for _ in range(config.epochs):
        module.train()
        for batch in torch.randperm(len(xt), generator=generator).split(config.batch_size):
            loss = criterion(module(xt[batch]), yt[batch])
            if config.l1 > 0:
                loss = loss + config.l1 * sum(w.abs().sum() for w in weights)
            if config.rs > 0:
                loss = loss + config.rs * relu_stability_loss(module, xt[batch], config.rs_epsilon)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    module.eval()
    return ReluNetwork.from_torch(module)


def ball(x0: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The L-infinity ball of radius ``eps`` around ``x0`` intersected with the pixel range [0, 1]."""
    if not eps >= 0:
        raise ValueError(f"eps={eps!r}: expected a radius >= 0")
    x0 = np.asarray(x0, dtype=np.float64)
    return np.clip(x0 - eps, 0.0, 1.0), np.clip(x0 + eps, 0.0, 1.0)


def pick_images(ds: Dataset, nets: Sequence[ReluNetwork], n_images: int = 20, seed: int = 0) -> np.ndarray:
    """``n_images`` test images (indices, sorted) that every network in ``nets`` classifies correctly.

    The same images for every network make the instances comparable (paired) across networks, and the
    margin at each centre is negative, so a positive optimum is a genuine adversarial example.
    """
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images={n_images!r}: expected a positive int")
    correct = np.ones(len(ds.y_test), dtype=bool)
    for net in nets:
        correct &= net(ds.x_test.astype(np.float64)).argmax(axis=1) == ds.y_test
    candidates = np.flatnonzero(correct)
    if candidates.size < n_images:
        raise ValueError(f"n_images={n_images}: only {candidates.size} test images are classified correctly by all")
    return np.sort(np.random.default_rng(seed).choice(candidates, n_images, replace=False))


def instances(ds: Dataset, images: Sequence[int], epsilons: Sequence[float] = EPSILONS) -> list[Instance]:
    """The margin problem around each test image in ``images`` at each radius in ``epsilons``."""
    out = []
    for eps in epsilons:
        for i in images:
            lower, upper = ball(ds.x_test[i], eps)
            out.append(Instance(
                name=f"image{i}-eps{eps:g}", lower=lower, upper=upper, sense="max",
                margin_label=int(ds.y_test[i]), meta={"image": int(i), "eps": float(eps)},
            ))
    return out


def attack(net: ReluNetwork, instance: Instance, steps: int = 100, restarts: int = 5, seed: int = 0) -> float:
    """The best margin found by projected sign-gradient ascent (a PGD attack, Madry et al. 2018).

    A lower bound on the instance's optimum found without any MILP, to check the MILP against: the
    margin ``max_j (y_j - y_k)`` is affine on each linear region, so its gradient is ``(e_j - e_k)^T J``
    with ``J`` the network's Jacobian there. Restarts begin at random points of the ball.
    """
    if instance.margin_label is None:
        raise ValueError(f"instance={instance.name!r}: expected a margin instance")
    rng = np.random.default_rng(seed)
    lo, hi = instance.lower, instance.upper
    step = 2.5 * float(np.max(hi - lo)) / max(steps, 1)
    best = -np.inf
    folded = net.folded()
    for r in range(restarts):
        x = (lo + hi) / 2 if r == 0 else rng.uniform(lo, hi)
        for _ in range(steps):
            y = net(x)
            k = instance.margin_label
            j = int(np.argmax(np.where(np.arange(y.size) == k, -np.inf, y)))
            best = max(best, float(y[j] - y[k]))
            x = np.clip(x + step * np.sign(_margin_gradient(folded, x, j, k)), lo, hi)
        best = max(best, instance.evaluate(net, x))
    return best


def _margin_gradient(folded: ReluNetwork, x: np.ndarray, j: int, k: int) -> np.ndarray:
    """Gradient of ``y_j - y_k`` at ``x`` (backpropagated through the active linear pieces)."""
    pre = folded.pre_activations(x)
    g = folded.layers[-1].weight[j] - folded.layers[-1].weight[k]
    for layer, a in zip(reversed(folded.hidden), reversed(pre[:-1]), strict=True):
        active = (a > 0) if layer.activation == "relu" else ((a > 0) & (a < layer.clip))
        g = (g * active) @ layer.weight
    return g


def digits_fallback_record() -> data.Resolution:
    """The record a study writes when it ran on digits because Fashion-MNIST was absent."""
    return data.synthetic("fashion-mnist", "scikit-learn digits (8x8) stand in: Fashion-MNIST was not found")
