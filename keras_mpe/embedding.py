"""The `MixedPrecisionEmbedding` layer."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import grouping, packing, precision, quantizers
from keras_mpe.backend import (
    IS_KERAS_3,
    gather_rows,
    keras,
    not_equal,
    set_variable_trainable,
)

MAX_BITS = precision.MAX_BITS
SEARCH, RETRAIN, PACKED = "search", "retrain", "packed"
SEARCH_FORWARDS = ("sample", "expectation")
# the arrays of `packing.PackedTable` a packed layer stores (the permutation only if needed)
PACKED_ARRAYS = ("words", "first_rows", "first_words", "group_bits", "permutation")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )


def _check_positive_float(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        ok = np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")


def _check_bit_widths(bit_widths: Any) -> tuple[int, ...]:
    values = precision.check_bit_widths(bit_widths)
    if max(values) == 0:
        raise ValueError(
            "`bit_widths` must have at least one non-zero entry. "
            f"Received: bit_widths={bit_widths!r}"
        )
    return values


@keras.utils.register_keras_serializable(package="keras_mpe")
class MixedPrecisionEmbedding(keras.layers.Layer):
    """An embedding table whose frequency groups learn their own bit-widths.

    A drop-in replacement for `keras.layers.Embedding` that implements
    Mixed-Precision Embeddings (MPE, Li et al., arXiv 2409.20305). Ids are split into
    `num_groups` equal groups by frequency. In the **search** state each group has a
    learned probability distribution over `bit_widths`; in training a looked-up row
    is LSQ+ fake-quantized at a width drawn from its group's distribution (or, with
    `search_forward="expectation"`, is the expectation over the widths), and
    `bit_penalty * sum_g E[bits_g] / c_g` is added to the loss (`c_g`: the group's
    share of all lookups, relative to the lightest group), so rare groups are pushed
    towards fewer bits. `freeze_precision()` picks one bit-width per group and moves
    the layer to the **retrain** state: fake quantization at the fixed bits, no
    penalty. The switch takes effect at the next step of an already compiled model.

    Only the rows a batch looks up are quantized, and the table's gradient is a
    `tf.IndexedSlices` over those rows, as with `keras.layers.Embedding`.

    Ids without frequencies: until `adapt()` is called or `frequencies=` given, ids
    are taken to be ranked by descending frequency (id 0 the most frequent), which is
    how `StringLookup` and `IntegerLookup` number an adapted vocabulary, and all
    groups weigh the same in the penalty.

    Ids outside `[0, input_dim)` (negative or too large) look up an all-zero vector
    and pass no gradient; they never return another row's embedding. Ids should be
    integers; float32 ids (which a Keras 3 `Sequential` without an int32
    `keras.Input` passes on) are accepted when `input_dim <= 2**24`, and those that
    are not whole numbers count as out of range.

    Example:

    ```python
    import numpy as np
    import keras_mpe
    from keras_mpe.backend import keras

    ids = np.random.default_rng(0).zipf(1.5, size=(512, 3)) % 1000
    layer = keras_mpe.MixedPrecisionEmbedding(1000, 8, num_groups=16, bit_penalty=1e-4)
    layer.adapt(ids)
    model = keras.Sequential([
        keras.Input(shape=(3,), dtype="int32"),
        layer,
        keras.layers.Flatten(),
        keras.layers.Dense(1),
    ])
    model.compile("adam", "mse")
    model.fit(ids, np.ones(512), epochs=1, verbose=0)
    layer.freeze_precision()            # retrain state: one bit-width per group
    model.fit(ids, np.ones(512), epochs=1, verbose=0)
    print(layer.memory_report()["compression_ratio"])
    ```

    Args:
        input_dim: int, the number of ids (rows of the table).
        output_dim: int, the embedding dimension.
        num_groups: int, the number of frequency groups; `min(num_groups, input_dim)`
            groups are made. Defaults to 128.
        bit_widths: the candidate bit-widths, strictly increasing, each in `0..8`;
            0 prunes a group (its rows look up zeros). Defaults to `(0, 1, ..., 6)`.
            A single width gives uniform quantization-aware training.
        temperature: float > 0, the softmax temperature of the precision logits.
            Defaults to 3e-3.
        bit_penalty: float >= 0, the weight of the expected-bits penalty. Defaults
            to 0.
        frequencies: optional `[input_dim]` non-negative id counts (see `adapt()`).
        embeddings_initializer: initializer of the float table. Defaults to
            `RandomNormal(0, 0.003)`.
        mask_zero: bool, whether id 0 is padding to mask, as in `Embedding`.
        quantizer_learning_rate_scale: float > 0, `s` in the parameterisation of the
            step sizes, `alpha = exp(s * log_step_sizes)`, and of the offset,
            `beta = s * offset_scale * relative_offset`: an adaptive optimizer moves
            `log(alpha)` and `beta / offset_scale` by about `s` times its learning
            rate per step. Defaults to 10, so that the step sizes can follow the
            table's growth under Adam (on MovieLens-1M at 16x, with the expectation
            forward, 10 gave test AUC 0.717 and 1 gave 0.666; benchmarks/README.md).
        search_forward: what a looked-up row is in the search state. `"sample"`
            (default): in training, each group's width is drawn from its softmax at
            every call (at the current temperature) and the row is quantized at that
            one width, while the precision logits get the expectation's gradient
            (straight-through); outside training, each group uses the width
            `select_bit_widths()` would pick at the final temperature, so validation
            scores the allocation the search would hand over. `"expectation"`: the
            paper's `sum_k p_k Q_{b_k}(w)`, in training and outside it. Under the
            expectation a mix of 0 and 6 bits passes for a cheap precise value, and
            the search learns allocations that fail once frozen (MovieLens-1M at
            16x: test AUC 0.773 +- 0.039 with it, 0.807 +- 0.001 sampled, 3 seeds;
            benchmarks/README.md).
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
        num_groups: int = 128,
        bit_widths: Sequence[int] = (0, 1, 2, 3, 4, 5, 6),
        temperature: float = 3e-3,
        bit_penalty: float = 0.0,
        frequencies: Any = None,
        embeddings_initializer: Any = None,
        mask_zero: bool = False,
        quantizer_learning_rate_scale: float = 10.0,
        search_forward: str = "sample",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        _check_positive_int("input_dim", input_dim)
        _check_positive_int("output_dim", output_dim)
        _check_positive_int("num_groups", num_groups)
        _check_positive_float("temperature", temperature)
        _check_positive_float("bit_penalty", bit_penalty, allow_zero=True)
        _check_positive_float("quantizer_learning_rate_scale", quantizer_learning_rate_scale)
        if not isinstance(mask_zero, bool):
            raise ValueError(f"`mask_zero` must be a bool. Received: mask_zero={mask_zero!r}")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.num_groups = int(num_groups)
        self.bit_widths = _check_bit_widths(bit_widths)
        self.initial_temperature = float(temperature)
        self.initial_bit_penalty = float(bit_penalty)
        self.quantizer_learning_rate_scale = float(quantizer_learning_rate_scale)
        if search_forward not in SEARCH_FORWARDS:
            raise ValueError(
                f"`search_forward` must be one of {SEARCH_FORWARDS}. "
                f"Received: search_forward={search_forward!r}"
            )
        self.search_forward = search_forward
        self._initial_frequencies = (
            np.zeros(self.input_dim, np.int64)
            if frequencies is None
            else grouping.validate_frequencies(frequencies, self.input_dim)
        )
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(mean=0.0, stddev=0.003)
        )
        self.mask_zero = mask_zero
        self.supports_masking = mask_zero
        self.groups = int(grouping.group_sizes(self.input_dim, self.num_groups).size)
        self._nonzero_bit_widths = [b for b in self.bit_widths if b > 0]
        self._packed: dict | None = None
        self._saved_packed_layout: dict | None = None  # set by from_config

    # ----------------------------------------------------------------- build
    def build(self, input_shape: Any = None) -> None:
        """Creates the table, the quantizer and precision variables and the groups
        (or, for a packed layer being loaded, the packed variables)."""
        if self._saved_packed_layout is not None:
            layout = self._saved_packed_layout
            self._add_packed_variables(
                {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout["arrays"].items()}
            )
            self._packed_max_bits = int(layout["max_bits"])
            self.built = True
            return
        num_bits = len(self.bit_widths)
        self.embeddings = self._add_weight(
            "embeddings", (self.input_dim, self.output_dim), self._initial_table
        )
        self.log_step_sizes = self._add_weight(
            "log_step_sizes", (len(self._nonzero_bit_widths),), self._initial_log_step_sizes
        )
        self.relative_offset = self._add_weight("relative_offset", (self.output_dim,), "zeros")
        self.offset_scale = self._add_weight(
            "offset_scale", (), lambda shape, dtype=None: self._initial_mean_abs, trainable=False
        )
        self.precision_logits = self._add_weight(
            "precision_logits", (self.groups, num_bits), "zeros"
        )
        id_to_group, masses = grouping.frequency_groups(self._initial_frequencies, self.num_groups)
        self.temperature = self._add_state("temperature", self.initial_temperature)
        self.bit_penalty = self._add_state("bit_penalty", self.initial_bit_penalty)
        self.frequencies = self._add_state("frequencies", self._initial_frequencies, "int64")
        self.id_to_group = self._add_state("id_to_group", id_to_group, "int32")
        self.group_masses = self._add_state("group_masses", masses)
        self.group_bit_widths = self._add_state(
            "group_bit_widths", np.full(self.groups, max(self.bit_widths)), "int32"
        )
        self.precision_frozen = self._add_state("precision_frozen", 0, "int32")
        # [key, draws] of the stateless sampling noise: restored with the other
        # variables, so a resumed search draws what the interrupted one would have
        self.sampling_seed = self._add_state(
            "sampling_seed", [np.random.randint(2**31 - 1), 0], "int32"
        )
        self.built = True

    def _add_weight(self, name, shape, initializer, dtype="float32", trainable=True):
        """`add_weight`, never autocast: quantization always runs in float32."""
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            dtype=dtype,
            trainable=trainable,
            autocast=False,
        )

    def _add_state(self, name: str, value: Any, dtype: str = "float32"):
        """A non-trainable variable starting at `value`.

        Set through its initializer, not `assign`: Keras may build the layer while
        tracing a train function, where an `assign` would run at every step.
        """
        value = np.asarray(value, dtype)
        return self._add_weight(
            name,
            value.shape,
            lambda shape, dtype=None: tf.constant(value),
            dtype=dtype,
            trainable=False,
        )

    def _initial_table(self, shape: Any, dtype: Any = None) -> tf.Tensor:
        """Draws the table and remembers its mean |value| for the step sizes.

        Keras may defer variable initialization (e.g. when a subclassed model is
        built inside `fit`), so the step sizes must not read the table variable.
        """
        table = tf.convert_to_tensor(self.embeddings_initializer(shape, "float32"))
        self._initial_mean_abs = tf.reduce_mean(tf.abs(table))
        if tf.executing_eagerly() and float(self._initial_mean_abs) == 0.0:
            raise ValueError(
                "`embeddings_initializer` gave an all-zero table; the step sizes start "
                "at 2 * mean|table| / sqrt(2**(bits-1)), so the table must not be zero. "
                f"Received: embeddings_initializer={self.embeddings_initializer!r}"
            )
        return table

    def _initial_log_step_sizes(self, shape: Any, dtype: Any = None) -> tf.Tensor:
        """`log(alpha_b) / scale`, `alpha_b = 2 * mean|W0| / sqrt(2**(b-1))` over the
        initial table, `scale` the quantizer learning-rate scale."""
        bits = np.asarray(self._nonzero_bit_widths, np.float32)
        alphas = self._initial_mean_abs * (2.0 / np.sqrt(2.0 ** (bits - 1.0)))
        return tf.math.log(alphas) / self.quantizer_learning_rate_scale

    @property
    def step_sizes(self) -> tf.Tensor:
        """The step size `alpha_b` of each non-zero candidate bit-width, float32.

        Learned as `log_step_sizes` (`alpha = exp(s * log_step_sizes)`, `s` the
        `quantizer_learning_rate_scale`): positive by construction, and an adaptive
        optimizer such as Adam changes them by a relative amount per step (about `s`
        times its learning rate) whatever their scale. Learned directly, a step size
        of about 1e-3 moves by the whole learning rate at every step.
        """
        if self._packed is not None:
            return self._packed["step_sizes"]
        return tf.exp(self.log_step_sizes * self.quantizer_learning_rate_scale)

    @property
    def offset(self) -> tf.Tensor:
        """The LSQ+ offset `beta`, float32 `[output_dim]`.

        Learned as `relative_offset`, in units of `s` times the initial table's mean
        |value| (`offset_scale`), so that an adaptive optimizer moves it by about `s`
        times its learning rate times the table's scale per step, not by the learning
        rate itself.
        """
        if self._packed is not None:
            return self._packed["offset"]
        return self.relative_offset * (self.offset_scale * self.quantizer_learning_rate_scale)

    # ------------------------------------------------------------ frequencies
    def adapt(self, data: Any) -> None:
        """Counts id frequencies in `data` and regroups the ids by them.

        Count on the training split only. Streams in chunks with O(input_dim) memory.

        Args:
            data: integer ids in `[0, input_dim)`: a numpy array, a tensor or a
                `tf.data.Dataset` of id tensors, of any shape.

        Example:

        >>> layer = MixedPrecisionEmbedding(4, 2, num_groups=2)
        >>> layer.adapt(np.array([0, 0, 3, 3, 3, 1]))
        >>> layer.id_to_group.numpy()
        array([1, 0, 0, 1], dtype=int32)
        """
        if not self.built:
            self.build()
        frequencies = grouping.count_frequencies(data, self.input_dim)
        id_to_group, masses = grouping.frequency_groups(frequencies, self.num_groups)
        self.frequencies.assign(frequencies)
        self.id_to_group.assign(id_to_group)
        self.group_masses.assign(masses)

    # ------------------------------------------------------------------- call
    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        inputs = self._integer_ids(tf.convert_to_tensor(inputs))
        if self._packed is not None:
            return tf.cast(self._packed_call(inputs), self.compute_dtype)
        valid = tf.logical_and(inputs >= 0, inputs < self.input_dim)
        ids = tf.reshape(tf.where(valid, tf.cast(inputs, tf.int32), 0), [-1])
        rows = gather_rows(self.embeddings, ids)  # reads only the looked-up rows
        groups = tf.gather(self.id_to_group, ids)
        outputs = quantizers.embedding_quantize(
            rows,
            quantizers.small_table_gather(self._search_weights(training), groups),
            self._candidate_step_sizes(),
            self.offset,
            tf.gather(self._width_index(), tf.gather(self.group_bit_widths, groups)),
            self.precision_frozen > 0,
            self.bit_widths,
            [
                quantizers.lsq_grad_scale(b, self.input_dim * self.output_dim)
                for b in self.bit_widths
            ],
        )
        outputs *= tf.reshape(tf.cast(valid, tf.float32), [-1, 1])
        self.add_loss(self._penalty())
        shape = tf.concat([tf.shape(inputs), [self.output_dim]], axis=0)
        return tf.cast(tf.reshape(outputs, shape), self.compute_dtype)

    def _integer_ids(self, inputs: tf.Tensor) -> tf.Tensor:
        """Integer ids as they are; float32 ids (a Keras 3 `Sequential` without
        `keras.Input(dtype="int32")` feeds them) as int32, with fractional or
        non-finite ones made invalid (-1, so they look up zeros)."""
        if inputs.dtype.is_integer:
            return inputs
        if inputs.dtype != tf.float32 or self.input_dim > 2**24:
            raise TypeError(
                "`MixedPrecisionEmbedding` takes integer ids (or float32 ids when "
                "input_dim <= 2**24, which float32 holds exactly). Received inputs of "
                f"dtype {inputs.dtype.name} for input_dim={self.input_dim}. Feed int32 ids, "
                "e.g. start a Keras 3 `Sequential` model with "
                "`keras.Input(shape=..., dtype='int32')`."
            )
        whole = tf.logical_and(
            tf.equal(tf.math.floor(inputs), inputs), tf.abs(inputs) <= self.input_dim
        )
        return tf.where(whole, tf.cast(tf.where(whole, inputs, 0.0), tf.int32), -1)

    def _candidate_step_sizes(self) -> tf.Tensor:
        """One step size per candidate bit-width (1.0, unused, for a 0-bit one)."""
        position = np.cumsum([b > 0 for b in self.bit_widths]) * [b > 0 for b in self.bit_widths]
        return tf.gather(tf.concat([[1.0], self.step_sizes], axis=0), position)

    def _width_index(self) -> tf.Tensor:
        """Maps a bit-width 0..8 to its index among the candidates."""
        index = np.zeros(MAX_BITS + 1, np.int32)
        index[list(self.bit_widths)] = np.arange(len(self.bit_widths))
        return tf.constant(index)

    def _probabilities(self, temperature: float | None = None) -> tf.Tensor:
        """Per-group distributions over the candidates, at the current temperature
        unless `temperature` is given."""
        temperature = self.temperature if temperature is None else temperature
        return tf.nn.softmax(self.precision_logits / temperature, axis=-1)

    def _search_weights(self, training: bool | None) -> tf.Tensor:
        """Per group, the weights of the candidates in the search forward (see
        `search_forward`): the probabilities, or one width with their gradient."""
        probabilities = self._probabilities()
        if self.search_forward == "expectation":
            return probabilities
        if training:
            # Frozen widths ignore the weights: draw (and advance the seed) only while
            # searching. The condition is on the integer index, off the gradient path.
            index = tf.cond(
                self.precision_frozen > 0,
                lambda: tf.zeros([self.groups], tf.int32),
                self._draw_widths,
            )
        else:
            index = precision.selected_index(self._probabilities(self.initial_temperature))
        one_hot = tf.one_hot(index, len(self.bit_widths))
        return probabilities + tf.stop_gradient(one_hot - probabilities)

    def _draw_widths(self) -> tf.Tensor:
        """One candidate index per group, drawn from the softmax at the current
        temperature, keyed by `sampling_seed`, which advances by one draw."""
        seed = tf.convert_to_tensor(self.sampling_seed)
        self.sampling_seed.assign_add([0, 1])
        logits = self.precision_logits / self.temperature
        return tf.random.stateless_categorical(logits, 1, seed, dtype=tf.int32)[:, 0]

    def _expected_bits(self) -> tf.Tensor:
        return tf.linalg.matvec(self._probabilities(), tf.constant(self.bit_widths, tf.float32))

    def _penalty(self) -> tf.Tensor:
        searching = tf.cast(1 - self.precision_frozen, tf.float32)
        weighted = tf.reduce_sum(self._expected_bits() / self.group_masses)
        return self.bit_penalty * searching * weighted

    def compute_mask(self, inputs: tf.Tensor, mask: Any = None) -> Any:
        if not self.mask_zero:
            return None
        return not_equal(inputs, 0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = tuple(input_shape) + (self.output_dim,)
        return shape if IS_KERAS_3 else tf.TensorShape(shape)

    # -------------------------------------------------------------- precision
    @property
    def state(self) -> str:
        """`"search"`, `"retrain"` or `"packed"`."""
        if self._packed is not None:
            return PACKED
        return RETRAIN if int(self.precision_frozen.numpy()) else SEARCH

    def expected_bits(self) -> np.ndarray:
        """Per-group expected bits `sum_k p_{g,k} * b_k`, float32 `[groups]`."""
        return self._expected_bits().numpy()

    def select_bit_widths(self, temperature: float | None = None) -> np.ndarray:
        """Per-group bits by the MPE rule: the largest width with p >= 1/(2K).

        Args:
            temperature: the softmax temperature to select at; by default the
                current one (`PrecisionSearch` selects at the final one).

        Returns int32 `[groups]`.
        """
        index = precision.selected_index(self._probabilities(temperature)).numpy()
        return np.asarray(self.bit_widths, np.int32)[index]

    def freeze_precision(self, bit_widths: Any = None) -> None:
        """Fixes one bit-width per group and moves to the retrain state.

        The precision logits stop being trainable and the bit penalty becomes 0.
        In a model that is already compiled the new behaviour applies from the next
        step; the logits then get zero gradients, and leave the list of trainable
        variables once the train function is rebuilt (`PrecisionSearch` does that).

        Args:
            bit_widths: per-group bits, `[groups]` values from the candidate
                `bit_widths`; by default `select_bit_widths()`.
        """
        chosen = self.select_bit_widths() if bit_widths is None else bit_widths
        chosen = np.asarray(chosen)
        if (
            chosen.shape != (self.groups,)
            or not np.issubdtype(chosen.dtype, np.integer)
            or not np.isin(chosen, self.bit_widths).all()
        ):
            raise ValueError(
                f"`bit_widths` must be {self.groups} integers (one per group) taken from "
                f"the candidates {self.bit_widths}. Received: bit_widths={bit_widths!r}"
            )
        self.group_bit_widths.assign(chosen.astype(np.int32))
        self.precision_frozen.assign(1)
        set_variable_trainable(self, self.precision_logits, False)

    def memory_report(self, bit_widths: Any = None) -> dict:
        """Bytes the packed table takes (see `keras_mpe.precision.memory_report`).

        Uses `bit_widths` when given, else the expected bits in the search state, the
        chosen bits after `freeze_precision()`, and the stored arrays once packed.

        Args:
            bit_widths: optional per-group bits `[groups]` to account for instead,
                e.g. `select_bit_widths()` during the search.

        Example:

        >>> layer = MixedPrecisionEmbedding(1000, 16, num_groups=4)
        >>> layer.build()
        >>> layer.freeze_precision([0, 0, 2, 4])
        >>> layer.memory_report()["payload_bytes"]
        3000
        """
        if self._packed is not None:
            return self._packed_memory_report()
        id_to_group = self.id_to_group.numpy()
        if bit_widths is not None:
            bits = np.asarray(bit_widths)
            if bits.shape != (self.groups,):
                raise ValueError(
                    f"`bit_widths` must have one entry per group, shape ({self.groups},). "
                    f"Received: bit_widths with shape {bits.shape}"
                )
        elif self.state == RETRAIN:
            bits = self.group_bit_widths.numpy()
        else:
            bits = self.expected_bits()
        return precision.memory_report(
            rows_per_group=np.bincount(id_to_group, minlength=self.groups),
            bits_per_group=bits,
            output_dim=self.output_dim,
            num_step_sizes=len(self._nonzero_bit_widths),
            needs_permutation=not grouping.groups_are_contiguous(id_to_group),
        )

    # ----------------------------------------------------------------- packing
    def packed_table(self) -> packing.PackedTable:
        """The packed arrays of this retrain-state layer's table, without changing it.

        `keras_mpe.packing.pack_table` of the float table at the frozen bit-widths:
        what `pack()` stores, and what `memory_report()` counts.

        Example:

        >>> layer = MixedPrecisionEmbedding(1000, 16, num_groups=4)
        >>> layer.build()
        >>> layer.freeze_precision([0, 0, 2, 4])
        >>> table = layer.packed_table()
        >>> table.nbytes == layer.memory_report()["total_bytes"], layer.state
        (True, 'retrain')
        """
        if not self.built or self.state != RETRAIN:
            state = self.state if self.built else "unbuilt"
            raise ValueError(
                f"Layer '{self.name}' is in the {state} state; only a retrain-state layer "
                "can be packed. Run the search (`PrecisionSearch`) or call "
                "`freeze_precision()` first."
            )
        return packing.pack_table(
            self.embeddings,  # read in chunks: no float copy of the table
            self.step_sizes.numpy(),
            self.offset.numpy(),
            self.bit_widths,
            self.id_to_group.numpy(),
            self.group_bit_widths.numpy(),
        )

    def pack(self) -> None:
        """Moves a retrain-state layer to the packed state, for inference and export.

        The float table and the search state are dropped; the table is kept as codes
        bit-packed into uint32 words (`packed_table()`), bit-exact with the retrain
        state's outputs, plus the step sizes, the offset, three int32 per group and,
        when groups are not contiguous id ranges, a packed permutation.

        Example:

        >>> layer = MixedPrecisionEmbedding(1000, 16, num_groups=4)
        >>> layer.build()
        >>> layer.freeze_precision([0, 0, 2, 4])
        >>> before = layer(np.arange(1000)).numpy()
        >>> layer.pack()
        >>> bool((layer(np.arange(1000)).numpy() == before).all()), layer.state
        (True, 'packed')
        """
        table = self.packed_table()
        if IS_KERAS_3:
            self._tracker.unlock()
        for name in list(self._named_variables()):
            delattr(self, name)
        arrays = {name: table.arrays()[name] for name in PACKED_ARRAYS if name in table.arrays()}
        self._add_packed_variables(
            {**arrays, "step_sizes": table.step_sizes, "offset": table.offset}
        )
        if IS_KERAS_3:
            self._tracker.lock()
        self._packed_max_bits = table.max_bits

    def _add_packed_variables(self, arrays: dict) -> None:
        """The packed state's variables, named as `pack()` names them."""
        self._packed = {
            name: self._add_state(
                f"packed_{name}" if name in PACKED_ARRAYS else name, value, value.dtype.name
            )
            for name, value in arrays.items()
        }

    def _packed_layout(self) -> dict:
        """What `build()` needs to recreate the packed variables (for `get_config`)."""
        return {
            "max_bits": self._packed_max_bits,
            "arrays": {
                name: [list(v.shape), tf.as_dtype(v.dtype).name]
                for name, v in self._packed.items()
            },
        }

    def _packed_call(self, inputs: tf.Tensor) -> tf.Tensor:
        return packing.lookup_packed(
            inputs,
            words=self._packed["words"],
            first_rows=self._packed["first_rows"],
            first_words=self._packed["first_words"],
            group_bits=self._packed["group_bits"],
            step_sizes=self.step_sizes,
            offset=self.offset,
            permutation=self._packed.get("permutation"),
            input_dim=self.input_dim,
            step_bit_widths=self._nonzero_bit_widths,
            max_bits=self._packed_max_bits,
        )

    def _packed_memory_report(self) -> dict:
        first_rows = self._packed["first_rows"].numpy().astype(np.int64)
        return precision.memory_report(
            rows_per_group=np.diff(np.append(first_rows, self.input_dim)),
            bits_per_group=self._packed["group_bits"].numpy(),
            output_dim=self.output_dim,
            num_step_sizes=len(self._nonzero_bit_widths),
            needs_permutation="permutation" in self._packed,
        )

    # ----------------------------------------------------------------- saving
    def _named_variables(self) -> dict:
        return {v.name.split("/")[-1].split(":")[0]: v for v in self.weights}

    def save_own_variables(self, store: Any) -> None:
        for name, variable in self._named_variables().items():
            store[name] = variable.numpy()

    def load_own_variables(self, store: Any) -> None:
        variables = self._named_variables()
        missing = sorted(set(variables) - set(store.keys()))
        if missing:
            raise ValueError(
                f"Layer '{self.name}' could not load its variables {missing}: the saved "
                f"file holds {sorted(store.keys())}."
            )
        for name, variable in variables.items():
            variable.assign(store[name])
        if self.state != PACKED:
            set_variable_trainable(self, self.precision_logits, self.state == SEARCH)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "num_groups": self.num_groups,
                "bit_widths": list(self.bit_widths),
                "temperature": self.initial_temperature,
                "bit_penalty": self.initial_bit_penalty,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "mask_zero": self.mask_zero,
                "quantizer_learning_rate_scale": self.quantizer_learning_rate_scale,
                "search_forward": self.search_forward,
            }
        )
        if self._packed is not None:
            config["packed_layout"] = self._packed_layout()
        return config

    @classmethod
    def from_config(cls, config: dict) -> "MixedPrecisionEmbedding":
        """Recreates a layer from `get_config()`, a packed one included."""
        config = dict(config)
        layout = config.pop("packed_layout", None)
        layer = cls(**config)
        layer._saved_packed_layout = layout
        return layer
