"""The `MixedPrecisionEmbedding` layer."""

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import (
    checks,
    codec,
    grouping,
    initial_table,
    precision,
    quantizers,
    table_files,
)
from keras_mpe.backend import (
    IS_KERAS_3,
    ShardedVariable,
    flatten_layers,
    gather_rows,
    keras,
    losses_of_this_call,
    not_equal,
    set_variable_trainable,
    tf_variable,
)
from keras_mpe.ids import ids_in_range, integer_ids

SEARCH, RETRAIN = "search", "retrain"
# the variables the search learns besides the table (`search_state`)
SEARCH_STATE = ("precision_logits", "log_step_sizes", "relative_offset")
SEARCH_FORWARDS = ("sample", "expectation")


class EmbeddingShapes:
    """The mask and output shape of an embedding layer with `mask_zero` and
    `output_dim` attributes, shared by the training layer and its packed twin."""

    mask_zero: bool
    output_dim: int

    def compute_mask(self, inputs: tf.Tensor, mask: Any = None) -> Any:
        if not self.mask_zero:
            return None
        return not_equal(inputs, 0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = tuple(input_shape) + (self.output_dim,)
        return shape if IS_KERAS_3 else tf.TensorShape(shape)

    @staticmethod
    def _rows_of(inputs: Any, look_up: Any) -> Any:
        """`look_up(ids)` over the ids of `inputs`, taken as `keras.layers.Embedding`
        takes them: a `tf.RaggedTensor` gives a `tf.RaggedTensor` of rows, and a
        `tf.SparseTensor` is made dense first (its missing entries are id 0)."""
        if isinstance(inputs, tf.RaggedTensor):
            return inputs.with_flat_values(look_up(inputs.flat_values))
        if isinstance(inputs, tf.SparseTensor):
            inputs = tf.sparse.to_dense(inputs)
        return look_up(inputs)


@keras.utils.register_keras_serializable(package="keras_mpe")
class MixedPrecisionEmbedding(EmbeddingShapes, keras.layers.Layer):
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
        final_temperature: float > 0, the softmax temperature of the precision
            logits at the end of the search, where `PrecisionSearch`'s schedule
            (which starts at its `initial_temperature`) arrives and where the
            per-group bits are selected. The `temperature` variable holds the
            current value. Defaults to 3e-3.
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
            table's growth under Adam.
        search_forward: what a looked-up row is in the search state. `"sample"`
            (default): in training, each group's width is drawn from its softmax at
            every call (at the current temperature) and the row is quantized at that
            one width, while the precision logits get the expectation's gradient
            (straight-through); outside training, each group uses the width
            `select_group_bits()` would pick at the final temperature, so validation
            scores the allocation the search would hand over. `"expectation"`: the
            paper's `sum_k p_k Q_{b_k}(w)`, in training and outside it. Under the
            expectation a mix of 0 and 6 bits passes for a cheap precise value, and
            the search can learn allocations that fail once frozen.
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
        final_temperature: float = 3e-3,
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
        self.input_dim = checks.positive_int("input_dim", input_dim)
        self.output_dim = checks.positive_int("output_dim", output_dim)
        self.num_groups = checks.positive_int("num_groups", num_groups)
        self.bit_widths = checks.bit_widths(bit_widths)
        if max(self.bit_widths) == 0:
            raise ValueError(
                "`bit_widths` must have at least one non-zero entry. "
                f"Received: bit_widths={bit_widths!r}"
            )
        self.final_temperature = checks.positive_float("final_temperature", final_temperature)
        self.initial_bit_penalty = checks.positive_float("bit_penalty", bit_penalty, True)
        self.quantizer_learning_rate_scale = checks.positive_float(
            "quantizer_learning_rate_scale", quantizer_learning_rate_scale
        )
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
        self.mask_zero = checks.boolean("mask_zero", mask_zero)
        self.supports_masking = mask_zero
        self.groups = int(grouping.group_sizes(self.input_dim, self.num_groups).size)
        self._nonzero_bit_widths = [b for b in self.bit_widths if b > 0]

    # ----------------------------------------------------------------- build
    def build(self, input_shape: Any = None) -> None:
        """Creates the table, the quantizer and precision variables and the groups."""
        num_bits = len(self.bit_widths)
        shape = (self.input_dim, self.output_dim)
        with tf.init_scope():  # once, even when built while a train step is traced
            self._fill_table = initial_table.draws_in_chunks(self.embeddings_initializer, shape)
            self._table_needs_fill = False
            self.embeddings = self._add_weight("embeddings", shape, self._initial_table)
            self._fill_table = False  # a deferred initialization draws the whole table
            if self._table_needs_fill:
                self._initial_mean_abs = initial_table.fill_table(
                    tf_variable(self.embeddings), self.embeddings_initializer
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
        self.temperature = self._add_state("temperature", self.final_temperature)
        self.bit_penalty = self._add_state("bit_penalty", self.initial_bit_penalty)
        self.frequencies = self._add_state("frequencies", self._initial_frequencies, "int64")
        self._initial_frequencies = None  # the variable holds them now (V int64)
        # int64, not int32: a GPU gathers int64 from a variable in device memory, int32
        # not at all (and not uint32: the collective ops that MultiWorkerMirroredStrategy
        # broadcasts variables with take no uint32)
        self.id_to_group = self._add_state("id_to_group", id_to_group, "int64")
        self.group_masses = self._add_state("group_masses", masses)
        self.group_bits = self._add_state(
            "group_bits", np.full(self.groups, max(self.bit_widths)), "int64"
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
        """Draws the table and remembers its mean |value| for the step sizes; a
        large table starts at zeros and `build` draws it in place, a chunk at a time
        (`keras_mpe.initial_table`).

        Keras may defer variable initialization (e.g. when a subclassed model is
        built inside `fit`), so the step sizes must not read the table variable.
        """
        if self._fill_table:
            self._table_needs_fill = True
            return tf.zeros(shape)
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
        alphas = quantizers.initial_step_sizes(self._initial_mean_abs, self._nonzero_bit_widths)
        return tf.math.log(alphas) / self.quantizer_learning_rate_scale

    @property
    def step_sizes(self) -> tf.Tensor:
        """The step size `alpha_b` of each non-zero candidate bit-width, float32.

        Learned as `log_step_sizes` (`alpha = exp(s * log_step_sizes)`, `s` the
        `quantizer_learning_rate_scale`): positive by construction, and an adaptive
        optimizer such as Adam changes them by a relative amount per step (about `s`
        times its learning rate) whatever their scale. Learned directly, a step size
        of about 1e-3 moves by the whole learning rate at every step. Rounded to
        `keras_mpe.quantizers.STEP_BITS` significant bits
        (`keras_mpe.quantizers.round_step_sizes`), so that the packed table
        dequantizes with a plain multiply and add, bit for bit as training does.
        """
        return quantizers.round_step_sizes(
            tf.exp(self.log_step_sizes * self.quantizer_learning_rate_scale)
        )

    @property
    def offset(self) -> tf.Tensor:
        """The LSQ+ offset `beta`, float32 `[output_dim]`.

        Learned as `relative_offset`, in units of `s` times the initial table's mean
        |value| (`offset_scale`), so that an adaptive optimizer moves it by about `s`
        times its learning rate times the table's scale per step, not by the learning
        rate itself.
        """
        return self.relative_offset * (self.offset_scale * self.quantizer_learning_rate_scale)

    # -------------------------------------------------------- quantizer range
    def _frequencies_known(self) -> bool:
        return any(counts.any() for _, counts in table_files.read_chunks(self.frequencies))

    def _weights(self, index: tf.Tensor, weighted: bool) -> np.ndarray:
        """The rows' weights in the range statistics: their frequencies, or 1 for every
        row while no frequencies are known (`weighted`). float64 `[len(index)]`."""
        if not weighted:
            return np.ones(int(index.shape[0]))
        return gather_rows(self.frequencies, index).numpy().astype(np.float64)

    def _row_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The table a chunk of rows at a time (`table_files.read_chunks`), so that a
        large table is never copied whole: `(rows float32 [n, D], their groups int64
        [n], their weights float64 [n])`."""
        weighted = self._frequencies_known()
        for start, rows in table_files.read_chunks(self.embeddings):
            index = tf.range(start, start + len(rows), dtype=tf.int64)
            groups = gather_rows(self.id_to_group, index).numpy()
            yield rows, groups, self._weights(index, weighted)

    def group_lookups(self) -> np.ndarray:
        """Per group, the weight of its lookups: the sum of its rows' frequencies, or
        its number of rows while no frequencies are known (before `adapt()`).

        `clipped_shares()` and `table_step_sizes()` weigh each row the same way, so
        these are the weights that combine per-group clipped shares into one.

        Returns float64 `[groups]`.

        Example:

        >>> layer = MixedPrecisionEmbedding(4, 2, num_groups=2)
        >>> layer.group_lookups().tolist()
        [2.0, 2.0]
        >>> layer.adapt(np.array([0, 0, 3, 3, 3, 1]))
        >>> layer.id_to_group.numpy()
        array([1, 0, 0, 1])
        >>> layer.group_lookups().tolist()
        [1.0, 5.0]
        """
        self._build_if_needed()
        weighted = self._frequencies_known()
        lookups = np.zeros(self.groups)
        for start, groups in table_files.read_chunks(self.id_to_group):  # not the table
            index = tf.range(start, start + len(groups), dtype=tf.int64)
            lookups += self._per_group(groups, self._weights(index, weighted))
        return lookups

    def _per_group(self, id_to_group: np.ndarray, row_values: np.ndarray) -> np.ndarray:
        """Sums per-row values into their groups: float64 `[groups]`."""
        return np.bincount(id_to_group, row_values, minlength=self.groups)

    def _current_group_bits(self) -> np.ndarray:
        """The frozen bits, or in the search those `select_group_bits()` would pick
        at the final temperature."""
        if self.state == RETRAIN:
            return self.group_bits.numpy().astype(np.int64)
        return self.select_group_bits(self.final_temperature).astype(np.int64)

    def clipped_shares(self, group_bits: Any = None) -> np.ndarray:
        """Per group, the share of its looked-up values that lie beyond the clip.

        Each row counts with its frequency (all rows alike before `adapt()`), each
        value at its group's bits and the current step sizes and offset. A clipped
        value gets no gradient from the quantizer (see `keras_mpe.quantizers`), so a
        healthy quantizer keeps this share small. Groups at 0 bits, or never looked
        up, are NaN.

        Args:
            group_bits: per-group bits `[groups]` from the candidates; by default the
                frozen bits, or in the search those selected at the final temperature.

        Returns float64 `[groups]`.

        Example:

        >>> layer = MixedPrecisionEmbedding(100, 4, num_groups=2, bit_widths=(0, 4))
        >>> layer.build()
        >>> layer.clipped_shares([0, 4]).tolist()
        [nan, 0.0]
        >>> _ = layer.embeddings.assign(np.full((100, 4), 1.0, np.float32))
        >>> layer.clipped_shares([0, 4]).tolist()
        [nan, 1.0]
        """
        clipped, lookups = self._clipped_and_lookups(group_bits)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.isnan(clipped), np.nan, clipped / lookups)

    def clipped_share(self, group_bits: Any = None) -> float:
        """The share of all looked-up values with bits that lie beyond the clip
        (`clipped_shares()` over the whole table, each group weighted by its lookups);
        0.0 when no group has bits."""
        clipped, lookups = self._clipped_and_lookups(group_bits)
        kept = ~np.isnan(clipped)
        return float(clipped[kept].sum() / lookups[kept].sum()) if kept.any() else 0.0

    def _clipped_and_lookups(self, group_bits: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per group, the weight of its clipped values (NaN at 0 bits or without
        lookups) and of its lookups."""
        self._build_if_needed()
        if group_bits is None:
            bits = self._current_group_bits()
        else:
            bits = checks.int_array("group_bits", group_bits, (self.groups,), 0, checks.MAX_BITS)
            if not np.isin(bits, self.bit_widths).all():
                raise ValueError(
                    f"`group_bits` must be taken from the candidates {self.bit_widths}. "
                    f"Received: group_bits={np.asarray(group_bits).tolist()}"
                )
        bit_step_sizes = self.candidate_step_sizes().numpy()[self._width_index().numpy()]
        offset = self.offset.numpy()
        clipped = lookups = np.zeros(self.groups)
        for rows, groups, weights in self._row_chunks():
            row_bits = bits[groups][:, None]
            shares = quantizers.clipped_share(
                rows, bit_step_sizes[row_bits], offset, row_bits, weights
            )
            clipped = clipped + self._per_group(groups, shares)
            lookups = lookups + self._per_group(groups, weights)  # as group_lookups()
        clipped[(bits == 0) | (lookups == 0)] = np.nan
        return clipped, lookups

    def lookup_sample(self, size: int, seed: int = 0) -> np.ndarray:
        """`size` row ids drawn with replacement, each with probability proportional
        to its lookup weight (its frequency, or alike before `adapt()`): a sample of
        the looked-up rows, over which `table_step_sizes(rows=...)` estimates the
        statistics of a large table. Reads the frequencies a chunk at a time.

        Returns sorted int64 `[size]`.

        Example:

        >>> layer = MixedPrecisionEmbedding(4, 2, frequencies=[0, 3, 1, 0])
        >>> sample = layer.lookup_sample(1000)
        >>> sorted(set(sample.tolist())), int((sample == 1).sum()) in range(700, 800)
        ([1, 2], True)
        """
        self._build_if_needed()
        size = checks.positive_int("size", size)
        rng = np.random.default_rng(seed)
        total = sum(float(counts.sum()) for _, counts in table_files.read_chunks(self.frequencies))
        if total == 0:
            return np.sort(rng.integers(0, self.input_dim, size))
        targets = np.sort(rng.uniform(0.0, total, size))
        ids, passed, first = [], 0.0, 0
        for start, counts in table_files.read_chunks(self.frequencies):
            ends = passed + np.cumsum(counts, dtype=np.float64)
            last = start + len(counts) == self.input_dim
            stop = size if last else int(np.searchsorted(targets, ends[-1]))
            rows = np.searchsorted(ends, targets[first:stop], side="right")
            ids.append(start + np.minimum(rows, len(counts) - 1))
            passed, first = ends[-1], stop
        return np.concatenate(ids).astype(np.int64)

    def table_step_sizes(self, rows: Any = None) -> np.ndarray:
        """LSQ+'s initial step sizes, taken over the table as it is now.

        `alpha_b = 2 * E|w - beta| / sqrt(2**(b-1))` for each non-zero candidate `b`,
        the mean over the looked-up values (each row weighted by its frequency, all
        rows alike before `adapt()`), `beta` the current offset. At build time the
        step sizes start at this value over the initial table.

        Args:
            rows: optional row ids to take the mean over instead, each counted
                alike, e.g. a `lookup_sample()`: the estimate that `QuantizerRange`
                uses for a large table, which it need not read whole.

        Returns float32 `[number of non-zero candidates]`.

        Example:

        >>> layer = MixedPrecisionEmbedding(10, 2, bit_widths=(0, 1, 3))
        >>> layer.build()
        >>> _ = layer.embeddings.assign(np.full((10, 2), 0.5, np.float32))
        >>> layer.table_step_sizes().tolist()
        [1.0, 0.5]
        """
        self._build_if_needed()
        if rows is None:
            chunks = self._row_chunks()
        else:
            if not len(rows):
                raise ValueError("`rows` must name at least one row. Received: rows=[]")
            rows = checks.int_array("rows", rows, (len(rows),), 0, self.input_dim - 1)
            index = tf.constant(rows)
            chunks = [(gather_rows(self.embeddings, index).numpy(), None, np.ones(len(index)))]
        offset = self.offset.numpy()
        deviation_sum = weight_sum = 0.0
        for values, _, weights in chunks:
            deviation_sum += float(np.dot(weights, np.abs(values - offset).mean(axis=1)))
            weight_sum += float(weights.sum())
        mean_abs = deviation_sum / weight_sum
        initial = quantizers.initial_step_sizes(mean_abs, self._nonzero_bit_widths)
        return initial.astype(np.float32)

    def raise_step_sizes(self, reset: bool = False, rows: Any = None) -> None:
        """Raises each step size to at least `table_step_sizes(rows)`, so the
        quantizer's range follows the table as it grows; with `reset`, sets them to
        it."""
        fitted = self.table_step_sizes(rows)
        current = self.step_sizes.numpy()
        self._assign_step_sizes(fitted if reset else np.maximum(current, fitted))

    def _assign_step_sizes(self, step_sizes: np.ndarray) -> None:
        self.log_step_sizes.assign(
            np.log(step_sizes).astype(np.float32) / self.quantizer_learning_rate_scale
        )

    # ------------------------------------------------------------ frequencies
    def adapt(self, data: Any) -> None:
        """Counts id frequencies in `data` and regroups the ids by them.

        Count on the training split only. Streams in chunks with O(input_dim) memory.
        Only before `freeze_precision()`: the frozen bits belong to the groups they
        were chosen for.

        Args:
            data: integer ids in `[0, input_dim)`: a numpy array, a tensor or a
                `tf.data.Dataset` of id tensors, of any shape.

        Example:

        >>> layer = MixedPrecisionEmbedding(4, 2, num_groups=2)
        >>> layer.adapt(np.array([0, 0, 3, 3, 3, 1]))
        >>> layer.id_to_group.numpy()
        array([1, 0, 0, 1])
        """
        self._build_if_needed()
        self._refuse_in_retrain_state("adapt")
        self.set_frequencies(grouping.count_frequencies(data, self.input_dim))

    def set_frequencies(self, frequencies: Any) -> None:
        """Regroups the ids by `frequencies`, counts made elsewhere (what `adapt`
        does once it has counted).

        Only before `freeze_precision()`, as for `adapt`.

        Args:
            frequencies: `[input_dim]` non-negative lookup counts.

        Example:

        >>> layer = MixedPrecisionEmbedding(4, 2, num_groups=2)
        >>> layer.set_frequencies([2, 1, 0, 3])
        >>> layer.id_to_group.numpy()  # group 0 the rarer ids
        array([1, 0, 0, 1])
        """
        self._build_if_needed()
        self._refuse_in_retrain_state("set_frequencies")
        frequencies = grouping.validate_frequencies(frequencies, self.input_dim)
        id_to_group, masses = grouping.frequency_groups(frequencies, self.num_groups)
        self.frequencies.assign(frequencies)
        self.id_to_group.assign(id_to_group.astype(np.int64))
        self.group_masses.assign(masses)

    def _refuse_in_retrain_state(self, method: str) -> None:
        if self.state == RETRAIN:
            raise ValueError(
                f"Layer '{self.name}' is in the retrain state: its frozen bits belong to "
                f"the groups they were chosen for, and `{method}()` would regroup the ids "
                f"under them. Call `{method}()` before the search, or build a new layer."
            )

    def set_table(self, table: Any) -> None:
        """Starts the layer from a trained `[input_dim, output_dim]` table: assigns it,
        and makes its mean |value| the unit of the learned offset (`offset_scale`).

        The step sizes are left as they are; `set_quantizer` sets them.

        Example:

        >>> layer = MixedPrecisionEmbedding(3, 2)
        >>> layer.set_table(np.full((3, 2), -0.5, np.float32))
        >>> float(layer.offset_scale.numpy())
        0.5
        """
        self._build_if_needed()
        table = tf.cast(tf.convert_to_tensor(table), tf.float32)
        if tuple(table.shape) != (self.input_dim, self.output_dim):
            raise ValueError(
                f"`table` must have shape ({self.input_dim}, {self.output_dim}) for layer "
                f"'{self.name}'. Received: table of shape {tuple(table.shape)}"
            )
        mean_abs = float(tf.reduce_mean(tf.abs(table)))
        if not math.isfinite(mean_abs) or mean_abs == 0.0:
            raise ValueError(
                f"`table` must have a finite, non-zero mean |value|: the step sizes are "
                f"scaled by it. Received: a table whose mean |value| is {mean_abs}"
            )
        self.embeddings.assign(table)
        self.offset_scale.assign(mean_abs)

    def rewind_table(self, table: np.ndarray) -> None:
        """Puts back a table saved earlier, e.g. the search's memory-mapped copy of the
        initial table (`keras_mpe.table_files.save_table`), a chunk of rows at a time,
        so no second whole table is held in memory. Unlike `set_table`, nothing else
        changes: the table comes back to a layer whose quantizer was learned on it.

        >>> layer = MixedPrecisionEmbedding(3, 2)
        >>> layer.build()
        >>> initial = layer.embeddings.numpy()
        >>> layer.set_table(np.ones((3, 2), np.float32))
        >>> layer.rewind_table(initial)
        >>> bool((layer.embeddings.numpy() == initial).all())
        True
        """
        self._build_if_needed()
        table_files.restore_table(self.embeddings, table)

    def set_quantizer(self, step_sizes: Any, offset: Any) -> None:
        """Sets the step size of each non-zero candidate width and the offset, through
        their learned parametrization (`step_sizes`, `offset`).

        Example:

        >>> layer = MixedPrecisionEmbedding(3, 2, bit_widths=(0, 2, 4))
        >>> layer.set_quantizer([0.5, 0.125], [0.0, 0.25])
        >>> [round(float(x), 6) for x in (*layer.step_sizes.numpy(), *layer.offset.numpy())]
        [0.5, 0.125, 0.0, 0.25]
        """
        self._build_if_needed()
        widths = (len(self._nonzero_bit_widths),)
        checks.float_array("step_sizes", step_sizes, widths, "one per non-zero candidate width")
        checks.float_array("offset", offset, (self.output_dim,), "[output_dim]")
        step_sizes, offset = np.asarray(step_sizes, np.float64), np.asarray(offset, np.float64)
        if not (step_sizes > 0).all():
            raise ValueError(f"`step_sizes` must be > 0. Received: step_sizes={step_sizes}")
        scale = self.quantizer_learning_rate_scale
        self.log_step_sizes.assign(np.log(step_sizes).astype(np.float32) / scale)
        unit = float(self.offset_scale.numpy()) * scale
        self.relative_offset.assign((offset / unit).astype(np.float32))

    @classmethod
    def from_embedding(cls, embedding: Any, **kwargs: Any) -> "MixedPrecisionEmbedding":
        """A layer that starts from a trained `keras.layers.Embedding`: the same
        `input_dim`, `output_dim`, `mask_zero`, name and dtype policy, built, with
        `set_table(embedding.embeddings)`.

        Example:

        >>> embedding = keras.layers.Embedding(10, 4, name="items")
        >>> embedding.build((None,))
        >>> layer = MixedPrecisionEmbedding.from_embedding(embedding, num_groups=2)
        >>> layer.name, layer.groups
        ('items', 2)

        Args:
            embedding: a built `keras.layers.Embedding`.
            **kwargs: more `MixedPrecisionEmbedding` arguments (`num_groups`,
                `bit_widths`, ...).
        """
        layer = cls(
            embedding.input_dim,
            embedding.output_dim,
            mask_zero=bool(embedding.mask_zero),
            name=embedding.name,
            dtype=embedding.dtype_policy,
            **kwargs,
        )
        layer.build()
        layer.set_table(embedding.embeddings)
        return layer

    # ------------------------------------------------------------------- call
    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self._rows_of(inputs, lambda ids: self._look_up(ids, training))

    def _look_up(self, inputs: tf.Tensor, training: bool | None) -> tf.Tensor:
        ids, valid = ids_in_range(integer_ids(inputs, self.input_dim), self.input_dim)
        shape = tf.concat([tf.shape(ids), [self.output_dim]], axis=0)
        ids, valid = tf.reshape(ids, [-1]), tf.reshape(valid, [-1])
        # gathers from the tf.Variables (a ResourceGather reads only the looked-up
        # rows) by int64 indices (a GPU handles int32 ones, and their gradient's
        # reshapes, in host memory)
        index = tf.cast(ids, tf.int64)
        rows = gather_rows(self.embeddings, index)
        groups = tf.cast(gather_rows(self.id_to_group, index), tf.int32)
        # each group's width as an index into the candidates (frozen, or drawn while
        # a "sample" search runs): [G] work, then one gather per row
        weights, drawn_index = self._search_weights(training)
        frozen = self.precision_frozen > 0
        group_width_index = tf.gather(self._width_index(), tf.cast(self.group_bits, tf.int32))
        if drawn_index is not None:
            group_width_index = tf.where(frozen, group_width_index, drawn_index)
        outputs = quantizers.embedding_quantize(
            rows,
            quantizers.small_table_gather(weights, groups),
            self.candidate_step_sizes(),
            self.offset,
            tf.gather(group_width_index, groups),
            frozen,
            self.bit_widths,
            [
                quantizers.lsq_grad_scale(b, self.input_dim * self.output_dim)
                for b in self.bit_widths
            ],
            self.search_forward,
        )
        outputs *= tf.cast(valid, tf.float32)[:, None]
        if not losses_of_this_call(self):  # once per forward pass, however often it is called
            self.add_loss(self._penalty())
        return tf.cast(tf.reshape(outputs, shape), self.compute_dtype)

    def candidate_step_sizes(self) -> tf.Tensor:
        """One step size per candidate bit-width (1.0, unused, for a 0-bit one).

        Example:

        >>> layer = MixedPrecisionEmbedding(3, 2, bit_widths=(0, 2, 4))
        >>> layer.set_quantizer([0.5, 0.125], [0.0, 0.0])
        >>> layer.candidate_step_sizes().numpy().tolist()
        [1.0, 0.5, 0.125]
        """
        position = np.cumsum([b > 0 for b in self.bit_widths]) * [b > 0 for b in self.bit_widths]
        return tf.gather(tf.concat([[1.0], self.step_sizes], axis=0), position)

    def _width_index(self) -> tf.Tensor:
        """Maps a bit-width 0..8 to its index among the candidates."""
        index = np.zeros(checks.MAX_BITS + 1, np.int32)
        index[list(self.bit_widths)] = np.arange(len(self.bit_widths))
        return tf.constant(index)

    def _probabilities(self, temperature: float | None = None) -> tf.Tensor:
        """Per-group distributions over the candidates, at the current temperature
        unless `temperature` is given."""
        temperature = self.temperature if temperature is None else temperature
        return tf.nn.softmax(self.precision_logits / temperature, axis=-1)

    def _search_weights(self, training: bool | None) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Per group, the weights of the candidates in the search forward (see
        `search_forward`) and the index of the width drawn: the probabilities and
        None, or one width's one-hot with the probabilities' gradient and its index."""
        probabilities = self._probabilities()
        if self.search_forward == "expectation":
            return probabilities, None
        if training:
            # Frozen widths ignore the weights: draw (and advance the seed) only while
            # searching. The condition is on the integer index, off the gradient path.
            index = tf.cond(
                self.precision_frozen > 0,
                lambda: tf.zeros([self.groups], tf.int32),
                self._draw_widths,
            )
        else:
            index = precision.selected_index(self._probabilities(self.final_temperature))
        one_hot = tf.one_hot(index, len(self.bit_widths))
        return probabilities + tf.stop_gradient(one_hot - probabilities), index

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

    # -------------------------------------------------------------- precision
    def _build_if_needed(self) -> None:
        """Builds the layer for the methods that read its variables: they depend on
        the constructor arguments only, as `adapt()` and a first call build them."""
        if not self.built:
            self.build()

    @property
    def state(self) -> str:
        """`"search"` or `"retrain"` (an unbuilt layer is in the search state)."""
        if not self.built:
            return SEARCH
        return RETRAIN if int(self.precision_frozen.numpy()) else SEARCH

    def expected_bits(self) -> np.ndarray:
        """Per-group expected bits `sum_k p_{g,k} * b_k`, float32 `[groups]`."""
        self._build_if_needed()
        return self._expected_bits().numpy()

    def select_group_bits(self, temperature: float | None = None) -> np.ndarray:
        """Per-group bits by the MPE rule: the largest width with p >= 1/(2K).

        Args:
            temperature: the softmax temperature to select at; by default the
                current one (`PrecisionSearch` selects at the final one).

        Returns int32 `[groups]`.

        >>> MixedPrecisionEmbedding(8, 2, num_groups=2).select_group_bits(temperature=0)
        Traceback (most recent call last):
        ...
        ValueError: `temperature` must be a finite number > 0. Received: temperature=0
        """
        if temperature is not None:
            temperature = checks.positive_float("temperature", temperature)
        self._build_if_needed()
        index = precision.selected_index(self._probabilities(temperature)).numpy()
        return np.asarray(self.bit_widths, np.int32)[index]

    def search_state(self) -> dict[str, np.ndarray]:
        """What the search learns besides the table: the precision logits, the step
        sizes (as `log_step_sizes`) and the offset (as `relative_offset`), as numpy
        arrays by variable name. `PrecisionSearch` keeps its best epoch's and puts
        them back with `set_search_state`.

        >>> layer = MixedPrecisionEmbedding(8, 2, num_groups=2, bit_widths=(0, 4))
        >>> sorted((name, value.shape) for name, value in layer.search_state().items())
        [('log_step_sizes', (1,)), ('precision_logits', (2, 2)), ('relative_offset', (2,))]
        """
        self._build_if_needed()
        return {name: getattr(self, name).numpy() for name in SEARCH_STATE}

    def set_search_state(self, state: dict[str, Any]) -> None:
        """Assigns what `search_state()` returned (all of it, same shapes)."""
        self._build_if_needed()
        if sorted(state) != sorted(SEARCH_STATE):
            raise ValueError(
                f"`state` must have the keys {sorted(SEARCH_STATE)}. Received: {sorted(state)}"
            )
        for name in SEARCH_STATE:
            getattr(self, name).assign(state[name])

    def set_temperature(self, temperature: float) -> None:
        """Sets the softmax temperature of the precision probabilities (the search
        anneals it; selection reads the final one)."""
        self._build_if_needed()
        self.temperature.assign(checks.positive_float("temperature", temperature))

    def set_bit_penalty(self, bit_penalty: float) -> None:
        """Sets the weight of the expected-bits penalty (the search steers it towards
        a target compression)."""
        self._build_if_needed()
        self.bit_penalty.assign(checks.positive_float("bit_penalty", bit_penalty, allow_zero=True))

    def freeze_precision(self, group_bits: Any = None) -> None:
        """Fixes one bit-width per group and moves to the retrain state.

        The precision logits stop being trainable and the bit penalty becomes 0.
        In a model that is already compiled the new behaviour applies from the next
        step; the logits then get zero gradients, and leave the list of trainable
        variables once the train function is rebuilt (`PrecisionSearch` does that).

        Args:
            group_bits: per-group bits, `[groups]` values from the candidate
                `bit_widths`; by default `select_group_bits()`.
        """
        self._build_if_needed()
        chosen = self.select_group_bits() if group_bits is None else group_bits
        chosen = np.asarray(chosen)
        if (
            chosen.shape != (self.groups,)
            or not np.issubdtype(chosen.dtype, np.integer)
            or not np.isin(chosen, self.bit_widths).all()
        ):
            raise ValueError(
                f"`group_bits` must be {self.groups} integers (one per group) taken from "
                f"the candidates {self.bit_widths}. Received: group_bits={group_bits!r}"
            )
        self.group_bits.assign(chosen.astype(np.int64))
        self.precision_frozen.assign(1)
        set_variable_trainable(self, self.precision_logits, False)

    def memory_report(self, group_bits: Any = None) -> dict:
        """Bytes the packed table takes (see `keras_mpe.precision.memory_report`).

        Uses `group_bits` when given, else the expected bits in the search state and
        the chosen bits after `freeze_precision()`.

        Args:
            group_bits: optional per-group bits `[groups]` to account for instead,
                e.g. `select_group_bits()` during the search.

        Example:

        >>> layer = MixedPrecisionEmbedding(1000, 16, num_groups=4)
        >>> layer.build()
        >>> layer.freeze_precision([0, 0, 2, 4])
        >>> layer.memory_report()["payload_bytes"]
        3000
        """
        self._build_if_needed()
        if group_bits is not None:
            bits = checks.float_array("group_bits", group_bits, (self.groups,), "one per group")
            if bits.min() < 0 or bits.max() > max(self.bit_widths):
                raise ValueError(
                    f"`group_bits` must be in [0, {max(self.bit_widths)}] (the candidates' "
                    f"range). Received: group_bits={np.asarray(group_bits).tolist()}"
                )
        elif self.state == RETRAIN:
            bits = self.group_bits.numpy()
        else:
            bits = self.expected_bits()
        rows_per_group, contiguous = grouping.group_layout(
            (groups for _, groups in table_files.read_chunks(self.id_to_group)), self.groups
        )
        return precision.memory_report(
            rows_per_group=rows_per_group,
            group_bits=bits,
            output_dim=self.output_dim,
            num_step_sizes=len(self._nonzero_bit_widths),
            needs_permutation=not contiguous,
        )

    # ----------------------------------------------------------------- packing
    def packed_table(self) -> codec.PackedTable:
        """The packed arrays of this retrain-state layer's table, without changing it.

        `keras_mpe.codec.pack_table` of the float table at the frozen bit-widths:
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
        if isinstance(self.embeddings, ShardedVariable):  # its gathers would reorder rows
            table = tf.convert_to_tensor(self.embeddings)
        else:  # read in chunks of rows by gathers from the tf.Variable: no float copy
            table = tf_variable(self.embeddings)
        return codec.pack_table(
            table,
            self.step_sizes.numpy(),
            self.offset.numpy(),
            self.bit_widths,
            self.id_to_group.numpy(),
            self.group_bits.numpy(),
        )

    # ----------------------------------------------------------------- saving
    def _named_variables(self) -> dict:
        """The layer's variables by name. A variable that a `variable_partitioner`
        sharded (ParameterServerStrategy) is among the weights as its shards,
        `<name>/part_<i>`: it is named once here, as the whole `ShardedVariable`."""
        named = {}
        for variable in self.weights:
            path = variable.name.split(":")[0].split("/")
            if len(path) > 1 and re.fullmatch(r"part_\d+", path[-1]):
                named[path[-2]] = getattr(self, path[-2])
            else:
                named[path[-1]] = variable
        return named

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
        set_variable_trainable(self, self.precision_logits, self.state == SEARCH)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "num_groups": self.num_groups,
                "bit_widths": list(self.bit_widths),
                "final_temperature": self.final_temperature,
                "bit_penalty": self.initial_bit_penalty,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "mask_zero": self.mask_zero,
                "quantizer_learning_rate_scale": self.quantizer_learning_rate_scale,
                "search_forward": self.search_forward,
            }
        )
        frequencies = self._initial_frequencies if not self.built else self.frequencies.numpy()
        if frequencies.any():  # given or adapted: a clone groups the ids the same way
            config["frequencies"] = frequencies.tolist()
        return config


@contextlib.contextmanager
def calls_routed(routes: Sequence[tuple[Any, Callable]]) -> Iterator[None]:
    """Inside the block, each `(layer, call)` of `routes` runs `call` in place of its
    own `call` (set on the instance with `object.__setattr__`, so that Keras tracks
    nothing new, and removed when the block ends).

    Example:

    >>> layer = MixedPrecisionEmbedding(3, 2)
    >>> with calls_routed([(layer, lambda inputs, **_: tf.zeros([1, 2]))]):
    ...     layer(np.array([1])).numpy().tolist()
    [[0.0, 0.0]]
    """
    for layer, call in routes:
        object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        for layer, _ in routes:
            object.__delattr__(layer, "call")


def find_mixed_precision_layers(model: Any) -> list[MixedPrecisionEmbedding]:
    """Every `MixedPrecisionEmbedding` inside `model`, nested ones included."""
    return [layer for layer in flatten_layers(model) if isinstance(layer, MixedPrecisionEmbedding)]
