"""`PackedEmbedding`: the inference-only serving twin of a retrained table."""

from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, codec, lookup, precision
from keras_mpe.backend import keras, tf_variable
from keras_mpe.embedding import EmbeddingShapes, MixedPrecisionEmbedding
from keras_mpe.ids import integer_ids


@keras.utils.register_keras_serializable(package="keras_mpe")
class PackedEmbedding(EmbeddingShapes, keras.layers.Layer):
    """An embedding table stored bit-packed, for inference: the serving twin of a
    retrained `MixedPrecisionEmbedding`.

    Made with `PackedEmbedding.from_layer(layer)` from a layer in the retrain state.
    Its variables are exactly the arrays of the packed layout, as
    `keras_mpe.codec.array_specs` names them: a uint8 table of rows per non-zero
    candidate bit-width (`rows_<b>`), the per-group fields, `step_sizes`, `offset`
    and, when the groups are not contiguous id ranges, `permutation`; none is
    trainable. Its output equals the retrained layer's bit for bit: a lookup gathers
    only the rows of the ids it is given and decodes them inside the graph
    (`keras_mpe.lookup.lookup_packed`), in unsigned integer, int64 and float32 ops,
    which a GPU runs in device memory.

    Example:

    ```python
    import numpy as np
    import keras_mpe

    layer = keras_mpe.MixedPrecisionEmbedding(1000, 8, num_groups=4)
    layer.build()
    layer.freeze_precision([0, 2, 4, 6])
    packed = keras_mpe.PackedEmbedding.from_layer(layer)
    ids = np.arange(1000)
    assert (packed(ids).numpy() == layer(ids).numpy()).all()
    print(packed.memory_report()["compression_ratio"])
    ```

    Args:
        input_dim: int, the number of ids.
        output_dim: int, the embedding dimension.
        bit_widths: the candidate bit-widths of the layer it was packed from (the
            step sizes belong to their non-zero entries).
        groups: int, the number of groups stored.
        width_rows: the rows stored at each non-zero candidate bit-width.
        permutation: bool, whether an id-to-row permutation is stored (the groups
            are not contiguous id ranges).
        mask_zero: bool, whether id 0 is padding to mask, as in `Embedding`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Input shape:
        Integer tensor of shape `(batch_size, ...)`.

    Output shape:
        `(batch_size, ..., output_dim)`, in the layer's compute dtype.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        bit_widths: Any,
        groups: int,
        width_rows: Any,
        permutation: bool = False,
        mask_zero: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.input_dim = checks.positive_int("input_dim", input_dim)
        self.output_dim = checks.positive_int("output_dim", output_dim)
        self.bit_widths = checks.bit_widths(bit_widths)
        self.nonzero_bit_widths = tuple(b for b in self.bit_widths if b > 0)  # of step_sizes
        self.groups = checks.positive_int("groups", groups)
        self.width_rows = checks.int_array(
            "width_rows",
            width_rows,
            (len(self.nonzero_bit_widths),),
            0,
            self.input_dim,
        ).tolist()
        self.permutation = checks.boolean("permutation", permutation)
        self.mask_zero = checks.boolean("mask_zero", mask_zero)
        self.supports_masking = mask_zero
        self._initial_arrays: dict[str, np.ndarray] = {}

    @classmethod
    def from_layer(cls, layer: MixedPrecisionEmbedding) -> "PackedEmbedding":
        """The packed twin of a retrain-state `MixedPrecisionEmbedding`, with its name,
        dtype policy and `mask_zero`; the layer itself is left as it is.

        Raises:
            TypeError: `layer` is not a `MixedPrecisionEmbedding`.
            ValueError: `layer` is not in the retrain state.
        """
        if not isinstance(layer, MixedPrecisionEmbedding):
            raise TypeError(
                "`layer` must be a MixedPrecisionEmbedding in the retrain state. "
                f"Received: layer={layer!r} (of type {type(layer).__name__})"
            )
        table = layer.packed_table()
        twin = cls(
            table.input_dim,
            table.output_dim,
            bit_widths=layer.bit_widths,
            groups=table.group_bits.size,
            width_rows=[len(table.tables[b]) for b in table.nonzero_bit_widths],
            permutation=table.permutation is not None,
            mask_zero=layer.mask_zero,
            name=layer.name,
            dtype=layer.dtype_policy,
        )
        twin._initial_arrays = table.arrays()
        twin.build()
        twin._initial_arrays = {}
        return twin

    def build(self, input_shape: Any = None) -> None:
        """Creates the packed variables (zeros, unless made by `from_layer`)."""
        specs = codec.array_specs(
            self.output_dim,
            self.nonzero_bit_widths,
            self.width_rows,
            self.groups,
            codec.permutation_words(self.input_dim) if self.permutation else None,
        )
        self.packed_variables = {}
        for name, (shape, dtype) in specs.items():
            value = self._initial_arrays.get(name, np.zeros(shape, dtype))
            self.packed_variables[name] = self.add_weight(
                name=name,
                shape=shape,
                dtype=dtype,
                initializer=lambda shape, dtype=None, value=value: tf.constant(value),
                trainable=False,
                autocast=False,
            )
        self.built = True

    def call(self, inputs: Any) -> Any:
        return self._rows_of(inputs, self._look_up)

    def _look_up(self, inputs: tf.Tensor) -> tf.Tensor:
        values = lookup.lookup_packed(
            integer_ids(inputs, self.input_dim),
            {name: tf_variable(v) for name, v in self.packed_variables.items()},
            input_dim=self.input_dim,
            nonzero_bit_widths=self.nonzero_bit_widths,
        )
        return tf.cast(values, self.compute_dtype)

    def packed_table(self) -> codec.PackedTable:
        """The stored arrays as a `keras_mpe.codec.PackedTable`."""
        return codec.PackedTable.from_arrays(
            {name: v.numpy() for name, v in self.packed_variables.items()},
            self.nonzero_bit_widths,
            self.input_dim,
            self.output_dim,
        )

    def memory_report(self) -> dict:
        """`keras_mpe.precision.memory_report` of the stored arrays: what the
        retrained layer's `memory_report()` counted."""
        table = self.packed_table()
        return precision.memory_report(
            rows_per_group=table.rows_per_group,
            group_bits=table.group_bits,
            output_dim=self.output_dim,
            num_step_sizes=len(self.nonzero_bit_widths),
            needs_permutation=self.permutation,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "bit_widths": list(self.bit_widths),
                "groups": self.groups,
                "width_rows": list(self.width_rows),
                "permutation": self.permutation,
                "mask_zero": self.mask_zero,
            }
        )
        return config
