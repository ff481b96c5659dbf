"""A callback that keeps the quantizer's range on the table as the table grows.

LSQ passes no gradient to a value beyond the clip (see `keras_mpe.quantizers`), so
when a table's rows grow faster than its learned step sizes, more and more of them
sit beyond the clip and stop learning; `MixedPrecisionEmbedding.clipped_share()`
measures that share. `QuantizerRange` re-estimates the step sizes from the table
with LSQ+'s initial formula (`MixedPrecisionEmbedding.table_step_sizes()`) every few
steps. `PrecisionSearch` runs one during the search by default.
"""

from typing import Any

from keras_mpe import checks
from keras_mpe.backend import keras
from keras_mpe.embedding import find_mixed_precision_layers

RULES = ("floor", "reset")
# a table of more rows is estimated over a sample of its lookups, not read whole
WHOLE_TABLE_ROWS = 2**20
SAMPLE_ROWS = 2**16


class QuantizerRange(keras.callbacks.Callback):
    """Every `every` training steps, sets each MixedPrecisionEmbedding's step sizes
    from LSQ+'s initial formula over its table as it is now.

    `rule="floor"` raises each step size to at least that value and never lowers it
    (the learned step size keeps any larger range); `rule="reset"` sets it to that
    value. The estimate reads only the layer's variables (the table, weighted by the
    id frequencies from `adapt()`), so every replica of a distributed model computes
    the same step sizes. A table of more than `WHOLE_TABLE_ROWS` rows is not read
    whole at every estimate: the mean is taken over `SAMPLE_ROWS` rows drawn once
    per `fit` by frequency (`MixedPrecisionEmbedding.lookup_sample`, seeded, so
    every replica draws the same). Steps are counted by the optimizer's `iterations`, so a fit
    resumed by `keras.callbacks.BackupAndRestore` keeps the schedule.

    `PrecisionSearch` runs a `QuantizerRange("floor")` during the search unless told
    otherwise (its `quantizer_range` argument); pass one to the retrain's `fit` to
    apply the rule there too. It is a batch-level callback, which tf-keras's `fit`
    refuses under `ParameterServerStrategy`.

    Example:

    ```python
    search = keras_mpe.PrecisionSearch(monitor="val_auc")  # floors the search's range
    model.fit(x, y, validation_data=(vx, vy), epochs=3, callbacks=[search])
    model.fit(x, y, validation_data=(vx, vy), epochs=3,
              callbacks=[keras_mpe.QuantizerRange("floor")])
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

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._layers = find_mixed_precision_layers(self.model)
        self._rows = [
            layer.lookup_sample(SAMPLE_ROWS) if layer.input_dim > WHOLE_TABLE_ROWS else None
            for layer in self._layers
        ]

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self.update()

    def update(self) -> None:
        """Sets the step sizes of every MixedPrecisionEmbedding of the model by the
        rule, now (`fit` calls it every `every` steps)."""
        for layer, rows in zip(self._layers, self._rows, strict=True):
            layer.raise_step_sizes(reset=self.rule == "reset", rows=rows)
