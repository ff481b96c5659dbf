"""`plot_precision`: a picture of the bits each frequency group ended up with."""

from typing import Any

import numpy as np

from keras_mpe import checks
from keras_mpe.embedding import SEARCH, MixedPrecisionEmbedding, find_mixed_precision_layers


def pyplot() -> Any:
    """`matplotlib.pyplot` on the file-only Agg backend, or an ImportError that says
    how to install matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib, which is not installed. Install it with "
            "`pip install matplotlib` (or `pip install keras-mpe[plot]`)."
        ) from error
    return plt


def group_frequencies(layer: MixedPrecisionEmbedding) -> np.ndarray:
    """Mean training count per id of each frequency group, float64 `[groups]`.

    Example:

    >>> layer = MixedPrecisionEmbedding(4, 2, num_groups=2)
    >>> layer.adapt(np.array([0, 0, 3, 3, 3, 1]))
    >>> group_frequencies(layer)
    array([0.5, 2.5])
    """
    id_to_group = layer.id_to_group.numpy()
    counts = np.bincount(id_to_group, weights=layer.frequencies.numpy(), minlength=layer.groups)
    return counts / np.maximum(np.bincount(id_to_group, minlength=layer.groups), 1)


def plot_precision(layer_or_model: Any, path: str) -> None:
    """Writes a PNG of bits per frequency group against group frequency (log axis).

    One panel per `MixedPrecisionEmbedding`. In the search state it shows each
    group's expected bits and the bits that would be selected now; afterwards the
    chosen bits. Needs matplotlib (`pip install matplotlib`).

    Example:

    ```python
    keras_mpe.plot_precision(model, "precision.png")
    ```

    Args:
        layer_or_model: a `MixedPrecisionEmbedding`, or a model holding some.
        path: where to write the PNG.
    """
    path = checks.local_path("path", path)
    plt = pyplot()
    if isinstance(layer_or_model, MixedPrecisionEmbedding):
        layers = [layer_or_model]
    else:
        layers = find_mixed_precision_layers(layer_or_model)
    if not layers:
        raise ValueError(
            "`layer_or_model` must be a MixedPrecisionEmbedding or a model holding one. "
            f"Received: {type(layer_or_model).__name__} without any"
        )
    figure, axes = plt.subplots(
        len(layers), 1, figsize=(7, 3.2 * len(layers)), squeeze=False, layout="constrained"
    )
    for layer, axis in zip(layers, axes[:, 0], strict=True):
        frequency = np.maximum(group_frequencies(layer), 1e-3)  # log axis: 0 -> 1e-3
        if layer.state == SEARCH:
            axis.plot(frequency, layer.expected_bits(), "o", alpha=0.5, label="expected bits")
            axis.step(frequency, layer.select_group_bits(), where="mid", label="selected bits")
        else:
            axis.step(frequency, layer.group_bits.numpy(), where="mid", label="bits")
        report = layer.memory_report()
        axis.set_xscale("log")
        axis.set_yticks(layer.bit_widths)
        axis.set_xlabel("mean training count per id in the group (log)")
        axis.set_ylabel("bits")
        axis.set_title(
            f"{layer.name}: {layer.groups} groups, {report['average_bits']:.2f} average bits, "
            f"{report['compression_ratio']:.1f}x"
        )
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left")
    figure.savefig(path, dpi=110)
    plt.close(figure)
