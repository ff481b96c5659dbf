"""`keras_mpe.convert`: mixed precision for a model that is already trained.

The trained float32 tables become `MixedPrecisionEmbedding` layers that start from the
trained values; their bit-widths are then either allocated from the trained table alone
(`epochs=0`) or searched and retrained for a few epochs on the training data.
"""

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, precision, quantizers
from keras_mpe.backend import IS_KERAS_3, flatten_layers, gather_rows, keras
from keras_mpe.callbacks import PrecisionSearch
from keras_mpe.embedding import (
    MixedPrecisionEmbedding,
    calls_routed,
    find_mixed_precision_layers,
)

# Rows sampled (by frequency) to fit the step sizes and the offset to a trained table.
QUANTIZER_SAMPLE_ROWS = 20_000
# Batch size of the forward passes that count ids, when `data` is arrays.
COUNT_BATCH = 4096
# By default the copy fine-tunes at this fraction of the learning rate it is compiled with.
FINE_TUNE_LEARNING_RATE_SCALE = 0.1


class ConversionError(ValueError):
    """A model or data that `keras_mpe.convert` cannot convert (the message says why)."""


def convert(
    model: Any,
    data: Any,
    *,
    target_compression: float | None = None,
    bit_penalty: float | None = None,
    epochs: int = 1,
    retrain_epochs: int | None = None,
    search: bool = False,
    validation_data: Any = None,
    layers: Sequence[Any] | None = None,
    train_other_layers: bool = True,
    model_fn: Callable[[], Any] | None = None,
    compile_options: dict | None = None,
    learning_rate: float | None = None,
    monitor: str | None = None,
    batch_size: int | None = None,
    callbacks: Sequence[Any] = (),
    num_groups: int = 128,
    bit_widths: Sequence[int] = (0, 1, 2, 3, 4, 5, 6),
    verbose: int = 0,
    **layer_options: Any,
) -> Any:
    """A copy of a trained model whose `keras.layers.Embedding` tables are mixed precision.

    Each chosen `keras.layers.Embedding` of `model` is replaced, in a new model, by a
    `MixedPrecisionEmbedding` of the same name, shape, `mask_zero` and dtype policy that
    starts from the trained table:

    - **table**: the trained values. The search's rewind (`PrecisionSearch`) thus
      rewinds to the trained table, and the retrain fine-tunes it at the chosen bits.
    - **step sizes and offset**: fitted to the trained table. For each candidate width
      the step size is the multiple of MPE's `2 mean|W| / sqrt(2^(b-1))` (from
      `STEP_SIZE_MULTIPLES`) with the least frequency-weighted squared quantization
      error over `QUANTIZER_SAMPLE_ROWS` rows drawn by frequency; the offset is 0 or
      the frequency-weighted per-dimension mean, whichever gives the smaller sum over
      the widths of the log errors.
    - **frequency groups**: from the ids that reach each layer in `data`, counted by
      running the new model over `data` (inference mode) with the layer's call
      hooked, so ids made inside the model (a `StringLookup` before the table in a
      TFRS tower) are counted as the table sees them.

    The other layers keep their weights bit for bit. Then:

    - `epochs=0`: no training. Each group gets the bits that minimise the summed
      frequency-weighted squared quantization error of the table (a pruned row counts
      its whole squared norm) under the byte budget of `target_compression`, by a
      Lagrangian allocation: each group takes the width that minimises
      `error + lambda * bits`, with the smallest `lambda` (found by bisection) whose
      compression reaches the target; `keras_mpe.precision.fit_to_budget` then puts
      the ratio in `[R, 1.1 R]`. The copy is compiled (see below) when it can be.
    - `epochs >= 1` (default `search=False`): the bits are allocated as with
      `epochs=0`, frozen, and the model is fine-tuned at them for `epochs` epochs
      (MPE's retrain from the trained table). The copy is compiled with
      `compile_options`, else with the original's compile config (a fresh optimizer
      of the same class and settings), and trains at `learning_rate`, by default
      `FINE_TUNE_LEARNING_RATE_SCALE` (0.1) times the compiled rate.
    - `epochs >= 1, search=True`: MPE's search instead: `epochs` epochs with
      `PrecisionSearch(target_compression=...)` (or the `bit_penalty` alone) pick
      and freeze each group's bits and rewind the table to the trained values, and
      `retrain_epochs` (default `epochs`) epochs fine-tune at those bits.

    Why the search is not the default: a search of one or two epochs has too few
    steps to learn an allocation from the task, and its result falls below the
    allocation from the trained table.
    `train_other_layers=False` freezes every other layer (only the tables and their
    quantizers train; a frozen `BatchNormalization` runs in inference mode, as Keras
    runs any frozen one).

    The result is in the retrain state, ready for `keras_mpe.export_saved_model`.
    `model` is not modified (its weights, layers and compile state).

    **Supported models.** Functional and `Sequential` models, nested functional and
    `Sequential` models inside them included, are copied with
    `keras.models.clone_model`. A subclassed model (`tfrs.models.Model` included)
    cannot be copied from its config in general: pass `model_fn`, a function that
    builds a new instance of the same architecture (same layers created in the same
    order, the same vocabularies for lookups); it is called on one batch of `data`
    to build it, every weight of `model` is copied into it by position (shapes are
    checked), and each chosen `Embedding` is replaced where it sits: an attribute of
    a layer or model, or a layer of a `Sequential` (the `Sequential` is rebuilt from
    the same layers). Keras 3 and tf-keras (`TF_USE_LEGACY_KERAS=1`, which TFRS needs)
    are both supported.

    **Not carried over**: an Embedding's regularizers and constraint (a warning says
    so), Keras 3's `lora_rank`, and a model's optimizer state (the fine-tuning starts
    with a fresh optimizer, as MPE's retrain does).

    Example:

    ```python
    import numpy as np
    import keras_mpe
    from keras_mpe.backend import keras

    rng = np.random.default_rng(0)
    ids = (rng.zipf(1.3, size=(2000, 4)) % 500).astype("int32")
    clicks = (ids[:, 0] % 3 == 0).astype("float32")
    inputs = keras.Input(shape=(4,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(500, 8, name="ids")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile("adam", "binary_crossentropy")
    model.fit(ids, clicks, epochs=2, verbose=0)

    fast = keras_mpe.convert(model, (ids, clicks), target_compression=8, epochs=0)
    tuned = keras_mpe.convert(model, (ids, clicks), target_compression=8, epochs=1)
    print(tuned.get_layer("ids").memory_report()["compression_ratio"])
    keras_mpe.export_saved_model(tuned, "/tmp/converted")
    ```

    Args:
        model: a trained Keras model holding `keras.layers.Embedding` layers and no
            `MixedPrecisionEmbedding`.
        data: the training data, to count ids and to train on: a batched
            `tf.data.Dataset` of `(features, labels)` or `(features, labels,
            weights)` or of features alone (a TFRS model, which reads its labels from
            the features), or a tuple `(x, y)` of arrays (or dicts of arrays).
        target_compression: the compression ratio R > 1 (float32 bytes over packed
            bytes, overhead included) every converted table must reach, passed to
            `PrecisionSearch(target_compression=R)`; needed when `epochs=0`.
        bit_penalty: the layers' bit penalty (`MixedPrecisionEmbedding(bit_penalty=)`).
            With `target_compression` it is only the start of the penalty the search
            steers; without a target it alone sets the size. At least one of the two
            is needed when `epochs >= 1`.
        epochs: fine-tuning epochs on `data`, or search epochs with `search=True`
            (0: the post-training allocation above, no training).
        retrain_epochs: with `search=True`, the retrain epochs after the search;
            defaults to `epochs`. Unused otherwise.
        search: with `epochs >= 1`, whether the bits are searched with
            `PrecisionSearch` (True) or allocated from the trained table as with
            `epochs=0` (False, the default; see above).
        validation_data: passed to both `fit`s (its metrics pick the search's best
            epoch when `monitor` is a `val_` entry).
        layers: the `Embedding` layers of `model` to convert, as layer objects or
            names; default all of them. The others are copied as they are.
        train_other_layers: whether the other layers are fine-tuned with the tables
            (True) or frozen (False).
        model_fn: for a subclassed model, a function returning a new, untrained
            instance of the same architecture (see above).
        compile_options: `model.compile` keyword arguments for the copy; default the
            original's compile config (`model.get_compile_config()`).
        learning_rate: the fine-tuning learning rate, set on the copy's optimizer after
            compiling; default `FINE_TUNE_LEARNING_RATE_SCALE` times the compiled
            one (left as it is when the compiled one is a schedule): the model starts
            trained, so it fine-tunes at a lower rate than it was trained at.
        monitor: what `PrecisionSearch` keeps the best epoch by; default
            `"val_loss"` with `validation_data`, else `"loss"`.
        batch_size: the batch size of `fit` and of counting when `data` is arrays.
        callbacks: more callbacks for both `fit`s.
        num_groups: frequency groups per table (`MixedPrecisionEmbedding`).
        bit_widths: candidate bit-widths (`MixedPrecisionEmbedding`).
        verbose: 0 for silence; 1 or 2 passes on to `fit` and prints the search summary.
        **layer_options: more `MixedPrecisionEmbedding` arguments (e.g.
            `final_temperature`, `search_forward`).

    Returns:
        The new model, its `MixedPrecisionEmbedding` layers in the retrain state.

    Raises:
        ConversionError (a ValueError): no `Embedding` to convert, a model that already
            holds a `MixedPrecisionEmbedding`, a subclassed model without `model_fn`,
            a `model_fn` whose model does not match, or `data` with an id outside a
            table's rows.
        ValueError, TypeError: a bad argument (the message names it).
    """
    epochs, retrain_epochs, target_compression, bit_penalty, learning_rate = _check_arguments(
        model,
        epochs=epochs,
        retrain_epochs=retrain_epochs,
        target_compression=target_compression,
        bit_penalty=bit_penalty,
        search=search,
        train_other_layers=train_other_layers,
        batch_size=batch_size,
        learning_rate=learning_rate,
        compile_options=compile_options,
        model_fn=model_fn,
    )
    chosen = _chosen_layers(_embeddings(model), layers)
    for layer in chosen:
        _check_embedding(layer)
    options = dict(
        num_groups=num_groups,
        bit_widths=tuple(bit_widths),
        bit_penalty=bit_penalty or 0.0,
        **layer_options,
    )
    MixedPrecisionEmbedding(1, 1, **options)  # checks the options before any work
    features = _first_features(data)

    pairs: list[tuple[Any, MixedPrecisionEmbedding]] = []
    copy = _copy_model(model, model_fn, features, chosen, options, pairs)
    if target_compression is not None:
        for _, layer in pairs:
            precision.check_reachable(layer, target_compression)
    counts = _count_ids(copy, data, [layer for _, layer in pairs], batch_size)
    for (_, layer), frequencies in zip(pairs, counts, strict=True):
        layer.set_frequencies(frequencies)
        layer.set_quantizer(
            *quantizers.fit_to_rows(
                _frequent_rows(layer), float(layer.offset_scale.numpy()), layer.bit_widths
            )
        )

    if not train_other_layers:
        converted = {id(layer) for _, layer in pairs}
        for layer in flatten_layers(copy, include_self=False):
            if id(layer) not in converted and not flatten_layers(layer, include_self=False):
                layer.trainable = False
    _compile(copy, model, compile_options, required=epochs > 0)
    if epochs > 0:
        _set_learning_rate(copy.optimizer, learning_rate)

    if epochs == 0 or not search:
        for _, layer in pairs:
            layer.freeze_precision(precision.allocate_bits(layer, target_compression))
    fit_options = dict(validation_data=validation_data, verbose=verbose)
    if epochs == 0:
        return copy
    if not search:
        _fit(copy, data, batch_size, epochs, list(callbacks), fit_options)
        return copy
    precision_search = PrecisionSearch(
        monitor=monitor or ("val_loss" if validation_data is not None else "loss"),
        target_compression=target_compression,
        verbose=int(bool(verbose)),
    )
    _fit(copy, data, batch_size, epochs, [precision_search, *callbacks], fit_options)
    _fit(copy, data, batch_size, retrain_epochs, list(callbacks), fit_options)
    return copy


# ------------------------------------------------------------------- arguments
def _check_arguments(
    model: Any,
    *,
    epochs: int,
    retrain_epochs: int | None,
    target_compression: float | None,
    bit_penalty: float | None,
    search: bool,
    train_other_layers: bool,
    batch_size: int | None,
    learning_rate: float | None,
    compile_options: dict | None,
    model_fn: Callable[[], Any] | None,
) -> tuple[int, int, float | None, float | None, float | None]:
    """Checks `convert`'s arguments against each other; returns them normalized:
    `(epochs, retrain_epochs, target_compression, bit_penalty, learning_rate)`."""
    epochs = checks.positive_int("epochs", epochs, allow_zero=True)
    retrain_epochs = epochs if retrain_epochs is None else retrain_epochs
    retrain_epochs = checks.positive_int("retrain_epochs", retrain_epochs, allow_zero=True)
    target_compression = checks.target_compression(target_compression)
    if bit_penalty is not None:
        bit_penalty = checks.positive_float("bit_penalty", bit_penalty, allow_zero=True)
    checks.boolean("search", search)
    if (epochs == 0 or not search) and target_compression is None:
        raise ValueError(
            "`epochs=0` and `search=False` allocate the bits from the trained table alone, "
            "at a byte budget: they need `target_compression`. Received: "
            "target_compression=None"
        )
    if epochs > 0 and search and target_compression is None and not bit_penalty:
        raise ValueError(
            "The search needs a size to aim at: pass `target_compression` (a ratio > 1) "
            f"or a `bit_penalty` > 0. Received: target_compression=None, "
            f"bit_penalty={bit_penalty!r}"
        )
    if epochs > 0 and search and retrain_epochs == 0:
        raise ValueError(
            "The search rewinds the tables to the trained values, so a retrain must follow "
            f"it: `retrain_epochs` must be >= 1 when epochs >= 1. Received: "
            f"retrain_epochs={retrain_epochs!r}"
        )
    checks.boolean("train_other_layers", train_other_layers)
    if batch_size is not None:
        checks.positive_int("batch_size", batch_size)
    if learning_rate is not None:
        learning_rate = checks.positive_float("learning_rate", learning_rate)
    if compile_options is not None and not isinstance(compile_options, dict):
        raise TypeError(
            "`compile_options` must be a dict of `model.compile` arguments or None. "
            f"Received: compile_options={compile_options!r}"
        )
    if model_fn is not None and not callable(model_fn):
        raise TypeError(
            f"`model_fn` must be a callable that returns a new model. Received: "
            f"model_fn={model_fn!r}"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a Keras model ({keras.Model.__module__}.Model). "
            f"Received: model of type {type(model).__name__}"
        )
    return epochs, retrain_epochs, target_compression, bit_penalty, learning_rate


def _embeddings(model: Any) -> list:
    """The `keras.layers.Embedding` layers of a float `model`."""
    already = find_mixed_precision_layers(model)
    if already:
        raise ConversionError(
            f"`model` {model.name!r} already holds MixedPrecisionEmbedding layers "
            f"{[layer.name for layer in already]}; convert takes a float model. To change "
            "its bits, run PrecisionSearch on it, or convert the float model it came from."
        )
    embeddings = [
        layer for layer in flatten_layers(model) if isinstance(layer, keras.layers.Embedding)
    ]
    if not embeddings:
        raise ConversionError(
            f"`model` {model.name!r} holds no keras.layers.Embedding, so there is nothing "
            f"to convert. Its layers: {[layer.name for layer in flatten_layers(model)][1:]}"
        )
    return embeddings


def _chosen_layers(embeddings: list, layers: Sequence[Any] | None) -> list:
    """The Embedding layers `layers` names (objects or names), default all."""
    if layers is None:
        return embeddings
    if isinstance(layers, (str, keras.layers.Layer)) or not isinstance(layers, Sequence):
        raise TypeError(
            "`layers` must be a list of Embedding layers of `model` or of their names. "
            f"Received: layers={layers!r}"
        )
    names = [layer.name for layer in embeddings]
    chosen = []
    for item in layers:
        if isinstance(item, str):
            if names.count(item) != 1:
                problem = "no" if item not in names else "several"
                raise ValueError(
                    f"`layers` names {item!r}, and `model` has {problem} Embedding of that "
                    f"name (its Embedding layers: {names}); pass the layer object instead."
                    if problem == "several"
                    else f"`layers` names {item!r}, and `model` has no Embedding of that "
                    f"name. Its Embedding layers: {names}"
                )
            item = embeddings[names.index(item)]
        elif not any(item is layer for layer in embeddings):
            raise ValueError(
                f"`layers` holds {item!r}, which is not an Embedding layer of `model`. "
                f"Its Embedding layers: {names}"
            )
        if not any(item is layer for layer in chosen):
            chosen.append(item)
    if not chosen:
        raise ValueError(f"`layers` is empty: nothing to convert. Received: layers={layers!r}")
    return chosen


def _check_embedding(layer: Any) -> None:
    if not layer.built:
        raise ConversionError(
            f"Embedding '{layer.name}' is not built (it holds no trained table); call or "
            "train the model first."
        )
    mode = getattr(layer, "quantization_mode", None)
    if mode:
        raise ConversionError(
            f"Embedding '{layer.name}' is already quantized by Keras ({mode!r}); convert "
            "needs its float table. Convert the model before `quantize()`."
        )
    dropped = [
        name
        for name in ("embeddings_regularizer", "activity_regularizer", "embeddings_constraint")
        if getattr(layer, name, None) is not None
    ]
    if dropped:
        warnings.warn(
            f"Embedding '{layer.name}' has {', '.join(dropped)}, which "
            "MixedPrecisionEmbedding does not support; the converted layer has none.",
            stacklevel=3,
        )


def _is_graph_model(model: Any) -> bool:
    """Whether `model` is functional or `Sequential` (copied with `clone_model`)."""
    return isinstance(model, keras.Sequential) or type(model) is _functional_class()


@functools.cache
def _functional_class() -> type:
    """The class `keras.Model(inputs, outputs)` makes (not public in either flavour)."""
    inputs = keras.Input((1,))
    return type(keras.Model(inputs, keras.layers.Dense(1)(inputs)))


# --------------------------------------------------------------------- copying
def _copy_model(
    model: Any,
    model_fn: Callable[[], Any] | None,
    features: Any,
    chosen: list,
    options: dict,
    pairs: list,
) -> Any:
    """A copy of `model` with each of the `chosen` Embedding layers replaced by a
    `MixedPrecisionEmbedding(**options)`, the trained weights copied; appends each
    `(embedding, replacement)` to `pairs`."""
    if _is_graph_model(model):
        if model_fn is not None:
            raise ValueError(
                "`model_fn` is for subclassed models; a functional or Sequential model "
                f"is copied with keras.models.clone_model. Received: model_fn={model_fn!r} "
                f"for a {type(model).__name__} model"
            )
        return _clone_graph_model(model, chosen, options, pairs)
    if model_fn is None:
        raise ConversionError(
            f"`model` {model.name!r} is a subclassed model ({type(model).__name__}), "
            "which cannot be copied from its config. Pass `model_fn`, a function that "
            f"builds a new {type(model).__name__} of the same architecture, e.g. "
            f"model_fn=lambda: {type(model).__name__}(...); its weights are copied "
            "from `model`."
        )
    return _rebuild_subclassed_model(model, model_fn, features, chosen, options, pairs)


def _clone_graph_model(model: Any, chosen: list, options: dict, pairs: list) -> Any:
    """`clone_model` of a functional or Sequential model, recursing into nested ones,
    with the chosen Embeddings replaced and every other layer's weights copied."""
    copied: list[tuple[Any, Any]] = []

    def clone(layer: Any) -> Any:
        if any(layer is target for target in chosen):
            new = _from_embedding(layer, options)
            pairs.append((layer, new))
            return new
        if isinstance(layer, keras.Model) and _is_graph_model(layer):
            return keras.models.clone_model(layer, clone_function=clone)
        new = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Layer):  # not an op such as a mask's NotEqual
            copied.append((layer, new))
        return new

    copy = keras.models.clone_model(model, clone_function=clone)
    for original, new in copied:
        new.set_weights(original.get_weights())
    _rename(copy, model.name)
    return copy


def _rename(model: Any, name: str) -> None:
    """Gives the copy the original's name (Keras 3's clone names it anew)."""
    if model.name != name:
        model._name = name


def _rebuild_subclassed_model(
    model: Any, model_fn: Callable, features: Any, chosen: list, options: dict, pairs: list
) -> Any:
    """A new model from `model_fn`, built on `features`, with `model`'s weights and the
    chosen Embeddings replaced where they sit."""
    copy = model_fn()
    if copy is model or not isinstance(copy, keras.Model):
        raise ConversionError(
            "`model_fn` must return a new Keras model of the same architecture as `model`. "
            f"Received: model_fn returned {'`model` itself' if copy is model else repr(copy)}"
        )
    copy(features, training=False)
    if len(copy.weights) != len(model.weights) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in zip(copy.weights, model.weights)
    ):
        raise ConversionError(
            "`model_fn` built a model whose weights differ from `model`'s: "
            f"{[tuple(w.shape) for w in copy.weights]} against "
            f"{[tuple(w.shape) for w in model.weights]}. It must create the same layers in "
            "the same order."
        )
    for new, old in zip(copy.weights, model.weights, strict=True):
        new.assign(old.numpy())
    originals = [layer for layer in flatten_layers(model) if _is_embedding(layer)]
    replicas = [layer for layer in flatten_layers(copy) if _is_embedding(layer)]
    for original, replica in zip(originals, replicas, strict=True):
        if any(original is target for target in chosen):
            new = _from_embedding(original, options)
            _replace(copy, replica, new)
            pairs.append((original, new))
    copy(features, training=False)  # builds rebuilt Sequentials
    return copy


def _is_embedding(layer: Any) -> bool:
    return isinstance(layer, keras.layers.Embedding)


def _replace(root: Any, old: Any, new: Any) -> None:
    """Puts `new` where `old` sits inside `root`: in place of an attribute of a layer,
    or, inside a Sequential, in a new Sequential of the same layers that replaces it."""
    for parent in flatten_layers(root):
        if isinstance(parent, keras.Sequential) and any(layer is old for layer in parent.layers):
            rebuilt = keras.Sequential(
                [new if layer is old else layer for layer in parent.layers], name=parent.name
            )
            if parent is root:
                raise ConversionError(
                    "A Sequential model is copied with clone_model, not with `model_fn`."
                )
            _replace(root, parent, rebuilt)
            return
        for attribute, value in list(vars(parent).items()):
            if value is old and not attribute.startswith("_"):
                tracker = getattr(parent, "_tracker", None)
                if IS_KERAS_3 and tracker is not None:
                    # in place in the built layer's tracked list (its state is locked)
                    tracker.replace_tracked_value("layers", old, new)
                else:
                    delattr(parent, attribute)  # tf-keras untracks the old layer
                setattr(parent, attribute, new)
                return
    raise ConversionError(
        f"Embedding '{old.name}' of the model from `model_fn` is neither an attribute of a "
        "layer nor a layer of a Sequential, so it cannot be replaced. Hold it in an "
        "attribute (`self.embedding = ...`) or a Sequential."
    )


def _from_embedding(original: Any, options: dict) -> MixedPrecisionEmbedding:
    """The MixedPrecisionEmbedding that replaces `original`, from its trained table."""
    try:
        return MixedPrecisionEmbedding.from_embedding(original, **options)
    except ValueError as error:  # a table the step sizes cannot be scaled by
        raise ConversionError(f"Embedding '{original.name}': {error}") from None


def _first_features(data: Any) -> Any:
    """The features of `data`'s first batch (to build a subclassed model)."""
    for features in _feature_batches(data, COUNT_BATCH):
        return features
    raise ValueError("`data` is empty: it must hold the training data.")


def _feature_batches(data: Any, batch_size: int):
    """`data`'s features, batch by batch."""
    if isinstance(data, tf.data.Dataset):
        if int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                "`data` is an infinite tf.data.Dataset (it repeats), and convert counts "
                "the ids over one pass of the data. Pass the dataset without `.repeat()`."
            )
        for element in data:
            yield element[0] if isinstance(element, tuple) else element
        return
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise TypeError(
            "`data` must be a batched tf.data.Dataset or a tuple (x, y) or (x, y, "
            f"sample_weight) of arrays. Received: data of type {type(data).__name__}"
        )
    x = data[0]
    rows = len(tf.nest.flatten(x)[0])
    for start in range(0, rows, batch_size):
        yield tf.nest.map_structure(lambda array, s=start: array[s : s + batch_size], x)


def _count_ids(
    model: Any, data: Any, layers: list[MixedPrecisionEmbedding], batch_size: int | None
) -> list[np.ndarray]:
    """How often each row of each layer is looked up over `data`: `model` runs over
    the features in inference mode, eagerly, with each layer's call hooked to count
    the ids it receives."""
    counts = [np.zeros(layer.input_dim, np.int64) for layer in layers]

    def counting(index: int, layer: MixedPrecisionEmbedding, call: Callable) -> Callable:
        def hooked(inputs, *args, **kwargs):
            ids = np.asarray(inputs).reshape(-1)
            if not np.issubdtype(ids.dtype, np.integer):
                whole = np.round(ids)
                if not np.array_equal(whole, ids):
                    raise ConversionError(
                        f"`data` gives layer '{layer.name}' ids that are not whole numbers "
                        f"(e.g. {ids[whole != ids][0]})."
                    )
                ids = whole.astype(np.int64)
            if ids.size:
                low, high = int(ids.min()), int(ids.max())
                if low < 0 or high >= layer.input_dim:
                    raise ConversionError(
                        f"`data` gives Embedding '{layer.name}' id {low if low < 0 else high}, "
                        f"outside its rows [0, input_dim={layer.input_dim}). The table was "
                        "trained on other ids: map unknown values to an id in range (an "
                        "OOV id) before converting."
                    )
                counts[index] += np.bincount(ids, minlength=layer.input_dim)
            return call(inputs, *args, **kwargs)

        return hooked

    routes = [(layer, counting(i, layer, layer.call)) for i, layer in enumerate(layers)]
    with calls_routed(routes):
        for features in _feature_batches(data, batch_size or COUNT_BATCH):
            model(features, training=False)
    return counts


def _frequent_rows(layer: MixedPrecisionEmbedding) -> np.ndarray:
    """`QUANTIZER_SAMPLE_ROWS` rows of `layer`'s table drawn by frequency (uniformly
    if nothing was counted), to fit its quantizer to."""
    frequencies = layer.frequencies.numpy().astype(np.float64)
    weights = frequencies if frequencies.sum() > 0 else np.ones_like(frequencies)
    rng = np.random.default_rng(0)
    rows = rng.choice(layer.input_dim, size=QUANTIZER_SAMPLE_ROWS, p=weights / weights.sum())
    return gather_rows(layer.embeddings, tf.constant(rows, tf.int64)).numpy()


# ------------------------------------------------------------------- training
def _compile(copy: Any, model: Any, options: dict | None, required: bool) -> None:
    """Compiles the copy with `options` or the original's compile config."""
    if options is not None:
        copy.compile(**options)
        return
    config = model.get_compile_config()  # None (tf-keras) or {} (Keras 3) if uncompiled
    if not config:
        if required:
            raise ValueError(
                f"`model` {model.name!r} is not compiled, so convert cannot train the copy "
                "as it was trained: pass `compile_options`, e.g. "
                "compile_options={'optimizer': 'adam', 'loss': 'binary_crossentropy'}."
            )
        return
    copy.compile_from_config(config)


def _set_learning_rate(optimizer: Any, learning_rate: float | None) -> None:
    """Sets `learning_rate`, or scales a constant compiled rate by
    `FINE_TUNE_LEARNING_RATE_SCALE`."""
    if learning_rate is None:
        compiled = optimizer.get_config().get("learning_rate")
        if not checks.is_number(compiled):  # a schedule: left as it is
            return
        learning_rate = float(compiled) * FINE_TUNE_LEARNING_RATE_SCALE
    optimizer.learning_rate = learning_rate


def _fit(
    model: Any, data: Any, batch_size: int | None, epochs: int, callbacks: list, options: dict
) -> None:
    """Trains `model`, and refuses weights that training made non-finite."""
    if isinstance(data, tf.data.Dataset):
        model.fit(data, epochs=epochs, callbacks=callbacks, **options)
    else:
        model.fit(*data, batch_size=batch_size, epochs=epochs, callbacks=callbacks, **options)
    for variable in model.trainable_variables:
        if not np.isfinite(np.asarray(variable)).all():
            name = getattr(variable, "path", variable.name)  # Keras 3: the full path
            raise ConversionError(
                f"Fine-tuning made {name} non-finite (the loss became NaN or infinite): "
                "check `data` for NaN or infinite labels and features, or lower "
                "`learning_rate`."
            )
