"""A callback that keeps the quantizer's range on the table as the table grows.

LSQ passes no gradient to a value beyond the clip (see `keras_mpe.quantizers`), so
when a table's rows grow faster than its learned step sizes, more and more of them
sit beyond the clip and stop learning; `MixedPrecisionEmbedding.clipped_share()`
measures that share. `QuantizerRange` re-estimates the step sizes from the table
with LSQ+'s initial formula (`MixedPrecisionEmbedding.table_step_sizes()`) every few
steps, in the search and in the retrain alike.
"""

from typing import Any

from keras_mpe import checks
from keras_mpe.backend import keras
from keras_mpe.embedding import find_mixed_precision_layers

RULES = ("floor", "reset")


class QuantizerRange(keras.callbacks.Callback):
    """Every `every` training steps, sets each MixedPrecisionEmbedding's step sizes
    from LSQ+'s initial formula over its table as it is now.

    `rule="floor"` raises each step size to at least that value and never lowers it
    (the learned step size keeps any larger range); `rule="reset"` sets it to that
    value. The estimate reads only the layer's variables (the table, weighted by the
    id frequencies from `adapt()`), so every replica of a distributed model computes
    the same step sizes. Pass the same callback to the search's `fit` and to the
    retrain's, so the range follows the table in both phases. It is a batch-level
    callback, which tf-keras's `fit` refuses under `ParameterServerStrategy`.

    Example:

    ```python
    range_rule = keras_mpe.QuantizerRange("floor")
    search = keras_mpe.PrecisionSearch(monitor="val_auc")
    model.fit(x, y, validation_data=(vx, vy), epochs=3, callbacks=[search, range_rule])
    model.fit(x, y, validation_data=(vx, vy), epochs=3, callbacks=[range_rule])
    ```

    Args:
        rule: `"floor"` or `"reset"`, see above.
        every: the number of training steps between two estimates, >= 1.
    """

    def __init__(self, rule: str = "floor", every: int = 50) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"`rule` must be one of {RULES}. Received: rule={rule!r}")
        self.rule = rule
        self.every = checks.positive_int("every", every)
        self._steps = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._layers = find_mixed_precision_layers(self.model)
        self._steps = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps += 1
        if self._steps % self.every == 0:
            for layer in self._layers:
                layer.raise_step_sizes(reset=self.rule == "reset")
