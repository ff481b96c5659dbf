"""`PackedEmbedding`: the inference-only serving twin of a retrained table."""

from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, codec, lookup
from keras_mpe.backend import keras, tf_variable
from keras_mpe.embedding import EmbeddingShapes, MixedPrecisionEmbedding


@keras.utils.register_keras_serializable(package="keras_mpe")
class PackedEmbedding(EmbeddingShapes, keras.layers.Layer):
    """An embedding table stored bit-packed, for inference: the serving twin of a
    retrained `MixedPrecisionEmbedding`.

    Made with `PackedEmbedding.from_layer(layer)` from a layer in the retrain state.
    Its variables are exactly the arrays of the packed layout (`keras_mpe.codec`):
    `words`, `first_rows`, `first_words`, `group_bits` (uint32), `step_sizes`,
    `offset` (float32) and, when the groups are not contiguous id ranges,
    `permutation` (uint32); none is trainable. Its output equals the retrained
    layer's bit for bit: a lookup gathers only the words of the ids it is given and
    unpacks them inside the graph (`keras_mpe.lookup.lookup_packed`), in 32-bit
    unsigned integer and float32 ops, which a GPU runs in device memory.

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
        num_words: int, the uint32 words of the payload.
        permutation_words: int or None, the uint32 words of the id-to-row
            permutation; None when the groups are contiguous id ranges.
        max_bits: int, the largest bit-width of any group.
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
        num_words: int,
        permutation_words: int | None = None,
        max_bits: int,
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
        self.num_words = checks.positive_int("num_words", num_words, allow_zero=True)
        if permutation_words is not None:
            permutation_words = checks.positive_int("permutation_words", permutation_words)
        self.permutation_words = permutation_words
        if not checks.is_int(max_bits) or not 0 <= max_bits <= max(self.bit_widths):
            raise ValueError(
                f"`max_bits` must be an integer in [0, {max(self.bit_widths)}] (the largest "
                f"candidate). Received: max_bits={max_bits!r}"
            )
        self.max_bits = int(max_bits)
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
            num_words=table.words.size,
            permutation_words=None if table.permutation is None else table.permutation.size,
            max_bits=table.max_bits,
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
        shapes = {
            "words": (self.num_words, "uint32"),
            "first_rows": (self.groups, "uint32"),
            "first_words": (self.groups, "uint32"),
            "group_bits": (self.groups, "uint32"),
            "step_sizes": (len(self.nonzero_bit_widths), "float32"),
            "offset": (self.output_dim, "float32"),
        }
        if self.permutation_words is not None:
            shapes["permutation"] = (self.permutation_words, "uint32")
        self.packed_variables = {}
        for name in codec.ARRAYS:
            if name not in shapes:
                continue
            size, dtype = shapes[name]
            value = self._initial_arrays.get(name, np.zeros(size, dtype))
            self.packed_variables[name] = self.add_weight(
                name=name,
                shape=(size,),
                dtype=dtype,
                initializer=lambda shape, dtype=None, value=value: tf.constant(value),
                trainable=False,
                autocast=False,
            )
        self.built = True

    def call(self, inputs: Any) -> Any:
        return self._rows_of(inputs, self._look_up)

    def _look_up(self, inputs: tf.Tensor) -> tf.Tensor:
        ids = lookup.integer_ids(inputs, self.input_dim)
        arrays = {name: tf_variable(v) for name, v in self.packed_variables.items()}
        values = lookup.lookup_packed(
            ids,
            **arrays,
            input_dim=self.input_dim,
            nonzero_bit_widths=self.nonzero_bit_widths,
            max_bits=self.max_bits,
        )
        return tf.cast(values, self.compute_dtype)

    def packed_table(self) -> codec.PackedTable:
        """The stored arrays as a `keras_mpe.codec.PackedTable`."""
        arrays = {name: v.numpy() for name, v in self.packed_variables.items()}
        permutation = arrays.pop("permutation", None)
        return codec.PackedTable(
            **arrays,
            permutation=permutation,
            nonzero_bit_widths=self.nonzero_bit_widths,
            input_dim=self.input_dim,
            output_dim=self.output_dim,
        )

    def memory_report(self) -> dict:
        """`keras_mpe.precision.memory_report` of the stored arrays: what the
        retrained layer's `memory_report()` counted."""
        return self.packed_table().memory_report()

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "bit_widths": list(self.bit_widths),
                "groups": self.groups,
                "num_words": self.num_words,
                "permutation_words": self.permutation_words,
                "max_bits": self.max_bits,
                "mask_zero": self.mask_zero,
            }
        )
        return config
