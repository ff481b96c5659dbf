"""Search, retrain and export of a large table: time, peak memory, step time.

A CTR-style model (26 fields of Zipf(1.2) ids -> one shared `input_dim x dim` table
-> a small MLP -> logit), trained with the same optimizer as
`keras.layers.Embedding` and as `MixedPrecisionEmbedding`. Every phase runs in a
fresh Python process, so no phase hides another's memory peak, and reports its own
peak RSS (the process's `VmHWM`; where a phase starts from a prepared model, the
peak is reset with `/proc/self/clear_refs` just before the measured part):

- `embedding`: build, compile and train `keras.layers.Embedding`;
- `adapt`: `MixedPrecisionEmbedding.adapt` over a `tf.data` stream of
  `--adapt_ids` ids (batches of `batch x fields`, drawn from a fixed pool of Zipf
  batches, so the stream itself takes no memory that grows with its length);
- `search`: build, compile and train the layer in the search state, under
  `PrecisionSearch` (which keeps the initial table for the rewind);
- `retrain`: build the layer, freeze it at the bits the search chose, train;
- `export`: a retrain-state model at the search's bits, as a process that loads
  the retrained weights holds it (no optimizer slots), then
  `keras_mpe.export_saved_model`; the peak is the rise above the RSS before export
  (the reload and one batch served from `serving_default` come after it).

Step times are medians over `--steps` steps after `--warmup` steps (the time
between consecutive `on_train_batch_end` calls of `fit`); ratios are to the
`embedding` phase of the same run. Printed, not asserted.

    python benchmarks/scale.py                                   # 1e7 rows, Adam
    python benchmarks/scale.py --input_dim 1000000 --steps 20
    python benchmarks/scale.py --optimizer sgd --phases embedding,search,retrain
    python benchmarks/scale.py --optimizer adam+sgd       # Keras 3: Adam, SGD for the table
    python benchmarks/scale.py --optimizer lazy_adam      # keras_mpe.optimizers.LazyAdam
    python benchmarks/scale.py --input_dim 1e5 --optimizer adagrad --dense_ops
    python benchmarks/scale.py --input_dim 1000 --steps 2 --batch 64 --adapt_ids 100000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PHASES = ("embedding", "adapt", "search", "retrain", "export")
OPTIMIZERS = ("adam", "adagrad", "sgd", "adam+sgd", "lazy_adam", "sparse_adagrad")


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (e.g. `VmHWM`), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss() -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    return _status_bytes("VmHWM")


def current_rss() -> int:
    """The process's resident set size (VmRSS) in bytes."""
    return _status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def zipf_batches(args: argparse.Namespace, count: int, seed: int = 0) -> list:
    """`count` batches of `(ids [batch, fields] int32, labels [batch, 1] float32)`."""
    rng = np.random.default_rng(seed)
    ids = (rng.zipf(1.2, size=(count, args.batch, args.fields)) - 1) % args.input_dim
    labels = rng.integers(0, 2, size=(count, args.batch, 1)).astype(np.float32)
    return list(zip(ids.astype(np.int32), labels, strict=True))


def optimizer(args: argparse.Namespace):
    """The optimizer named by `--optimizer`; `adam+sgd` (Keras 3 only): Adam for every
    variable but the tables, which SGD updates (row-sparse); `lazy_adam` and
    `sparse_adagrad`: `keras_mpe.optimizers.LazyAdam` and `Adagrad` (row-sparse)."""
    import keras_mpe
    from keras_mpe.backend import IS_KERAS_3, keras

    if args.optimizer == "adam+sgd":
        if not IS_KERAS_3:
            raise ValueError(
                "`--optimizer adam+sgd` needs Keras 3's `keras.optimizers.MultiOptimizer`, "
                "which tf-keras does not have. Received: --optimizer adam+sgd under tf-keras"
            )
        tables = {".*embeddings": keras.optimizers.SGD(args.table_learning_rate)}
        return keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(keras.optimizers.Adam(args.learning_rate), tables)
        )
    return {
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "sgd": keras.optimizers.SGD,
        "lazy_adam": keras_mpe.optimizers.LazyAdam,
        "sparse_adagrad": keras_mpe.optimizers.Adagrad,
    }[args.optimizer](args.learning_rate)


def build_model(args: argparse.Namespace, embedding):
    from keras_mpe.backend import keras

    inputs = keras.Input(shape=(args.fields,), dtype="int32")
    x = keras.layers.Flatten()(embedding(inputs))
    for units in args.hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(
        optimizer=optimizer(args),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        jit_compile=args.jit,
    )
    return model


def mpe_layer(args: argparse.Namespace, batches: list):
    import keras_mpe

    layer = keras_mpe.MixedPrecisionEmbedding(args.input_dim, args.dim, bit_penalty=1e-6)
    layer.adapt(np.stack([ids for ids, _ in batches]))
    return layer


def train(model, batches: list, steps: int, callbacks: list | None = None) -> tuple:
    """Fits `steps` batches (cycling through `batches`); returns the seconds of each
    step and the peak RSS at the end of training, before `callbacks` end."""
    import tensorflow as tf

    from keras_mpe.backend import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def on_train_end(self, logs=None):  # before the callbacks after it
            self.peak_rss = peak_rss()

    ids = np.stack([x for x, _ in batches])
    labels = np.stack([y for _, y in batches])
    dataset = tf.data.Dataset.from_tensor_slices((ids, labels)).repeat().take(steps)
    timer = StepTimer()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[timer, *(callbacks or [])])
    return list(np.diff(timer.ends)), timer.peak_rss


def serve_one_batch(directory: str, ids: np.ndarray, model) -> dict:
    """Loads the SavedModel, serves `ids` through `serving_default` and compares
    the outputs with the Keras model's."""
    import tensorflow as tf

    begin = time.perf_counter()
    serving = tf.saved_model.load(directory).signatures["serving_default"]
    loaded_s = time.perf_counter() - begin
    (name,) = serving.structured_input_signature[1]
    begin = time.perf_counter()
    (served,) = serving(**{name: tf.constant(ids)}).values()
    served_s = time.perf_counter() - begin
    difference = float(np.abs(served.numpy() - model.predict(ids, verbose=0)).max())
    return {"load_s": loaded_s, "served_s": served_s, "served_max_difference": difference}


def run_phase(args: argparse.Namespace) -> dict:
    """Runs one phase in this process; returns its figures."""
    import tensorflow as tf

    import keras_mpe
    from keras_mpe.backend import keras

    result = {}
    start = time.perf_counter()
    batches = zipf_batches(args, args.pool)
    steps = args.warmup + args.steps
    if args.phase == "embedding":
        model = build_model(args, keras.layers.Embedding(args.input_dim, args.dim))
        result["setup_s"] = time.perf_counter() - start
        times, _ = train(model, batches, steps)
    elif args.phase == "search":
        model = build_model(args, mpe_layer(args, batches))
        result["setup_s"] = time.perf_counter() - start
        search = keras_mpe.PrecisionSearch(monitor="loss", verbose=0)
        times, result["peak_rss_training_bytes"] = train(model, batches, steps, [search])
        layer = keras_mpe.export.find_mixed_precision_layers(model)[0]
        result["bits"] = layer.group_bits.numpy().tolist()
    elif args.phase in ("retrain", "export"):
        layer = mpe_layer(args, batches)
        layer.freeze_precision(json.loads(args.bits) if args.bits else None)
        model = build_model(args, layer)
        result["setup_s"] = time.perf_counter() - start
        if args.phase == "retrain":
            times, _ = train(model, batches, steps)
        else:
            result["peak_reset"] = reset_peak_rss()
            result["rss_before_bytes"] = current_rss()
            begin = time.perf_counter()
            with tempfile.TemporaryDirectory() as directory:
                keras_mpe.export_saved_model(model, directory)
                result["run_s"] = time.perf_counter() - begin
                result["saved_model_bytes"] = sum(
                    os.path.getsize(os.path.join(root, name))
                    for root, _, names in os.walk(directory)
                    for name in names
                )
                result["peak_rss_bytes"] = peak_rss()
                reset_peak_rss()
                result.update(serve_one_batch(directory, batches[0][0], model))
                result["serve_peak_rss_bytes"] = peak_rss()
            times = None
    elif args.phase == "adapt":
        layer = keras_mpe.MixedPrecisionEmbedding(args.input_dim, args.dim)
        layer.build()
        pool = tf.constant(np.stack([ids for ids, _ in batches]))
        per_batch = args.batch * args.fields
        count = -(-args.adapt_ids // per_batch)
        stream = tf.data.Dataset.from_tensor_slices(pool).repeat().take(count)
        result["setup_s"] = time.perf_counter() - start
        result["peak_reset"] = reset_peak_rss()
        result["rss_before_bytes"] = current_rss()
        begin = time.perf_counter()
        layer.adapt(stream)
        result["run_s"] = time.perf_counter() - begin
        result["ids"] = count * per_batch
        counted = int(layer.frequencies.numpy().sum())
        if counted != result["ids"]:
            raise AssertionError(f"adapt counted {counted} ids of {result['ids']}")
        times = None
    else:
        raise ValueError(f"`phase` must be one of {PHASES}. Received: phase={args.phase!r}")
    if times is not None:
        result["run_s"] = float(sum(times))
        result["step_s"] = float(np.median(times[args.warmup :]))
    result.setdefault("peak_rss_bytes", peak_rss())
    result["flavour"] = "Keras 3" if keras_mpe.backend.IS_KERAS_3 else "tf-keras"
    result["tf_version"] = tf.__version__
    return result


def dense_ops(args: argparse.Namespace) -> str:
    """The op types of one traced train step (forward, gradient, optimizer update)
    of the MPE model that output a whole `[input_dim, dim]` tensor, with counts, and
    the scatter ops: what makes a step's cost grow with the table."""
    import tensorflow as tf

    from keras_mpe.backend import keras

    model = build_model(args, mpe_layer(args, zipf_batches(args, 1)))
    variables = model.trainable_variables
    model.optimizer.build(variables)

    @tf.function
    def step(ids, labels):
        with tf.GradientTape() as tape:
            logits = model(ids, training=True)
            loss = keras.losses.BinaryCrossentropy(from_logits=True)(labels, logits)
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    graph = step.get_concrete_function(
        tf.TensorSpec([None, args.fields], tf.int32), tf.TensorSpec([None, 1], tf.float32)
    ).graph
    operations = list(graph.get_operations())
    operations += [op for f in graph._functions.values() for op in f.graph.get_operations()]
    dense, scatters = {}, set()
    for op in operations:
        if any(out.shape == (args.input_dim, args.dim) for out in op.outputs):
            dense[op.type] = dense.get(op.type, 0) + 1
        if "Scatter" in op.type or op.type.startswith("ResourceSparseApply"):
            scatters.add(op.type)
    text = ", ".join(f"{name} x{count}" for name, count in sorted(dense.items())) or "none"
    return f"[input_dim, dim] outputs: {text}; scatter ops: {', '.join(sorted(scatters))}"


def child_arguments(args: argparse.Namespace, phase: str, bits: list | None) -> list[str]:
    arguments = [sys.executable, os.path.abspath(__file__), "--phase", phase]
    for name in ("input_dim", "dim", "fields", "batch", "steps", "warmup", "pool"):
        arguments += [f"--{name}", str(getattr(args, name))]
    arguments += ["--hidden", ",".join(map(str, args.hidden)), "--optimizer", args.optimizer]
    for name in ("learning_rate", "table_learning_rate", "adapt_ids"):
        arguments += [f"--{name}", str(getattr(args, name))]
    if args.jit:
        arguments.append("--jit")
    if bits is not None:
        arguments += ["--bits", json.dumps(bits)]
    return arguments


def _mem_available() -> int:
    """The system's MemAvailable in bytes."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def run_watched(arguments: list[str], min_available_gib: float) -> tuple:
    """Runs a phase's process; kills it when the system's available memory drops
    below `min_available_gib`, before the kernel's OOM killer picks a process.
    Returns `(returncode, stdout, stderr, {"killed", "max_rss_bytes", "killed_at_s"})`,
    the child's RSS sampled every 0.2 s."""
    begin = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(arguments, stdout=out, stderr=err, text=True, env=os.environ)
        watched = {"killed": False, "max_rss_bytes": 0}
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/status") as status:
                    rss = next(int(x.split()[1]) * 1024 for x in status if x.startswith("VmRSS"))
                watched["max_rss_bytes"] = max(watched["max_rss_bytes"], rss)
            except (OSError, StopIteration):
                pass
            if _mem_available() < min_available_gib * 2**30:
                child.kill()
                child.wait()
                watched.update(killed=True, killed_at_s=time.perf_counter() - begin)
                break
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        return child.returncode, out.read(), err.read(), watched


def positive_int(text: str) -> int:
    value = int(float(text))  # accepts 1e7
    if value < 1 or value != float(text):
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text!r}")
    return value


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dim", type=positive_int, default=10_000_000)
    parser.add_argument("--dim", type=positive_int, default=16)
    parser.add_argument("--fields", type=positive_int, default=26)
    parser.add_argument("--batch", type=positive_int, default=2048)
    parser.add_argument("--hidden", default="256,128", help="MLP widths, comma-separated")
    parser.add_argument("--optimizer", default="adam", help=f"one of {OPTIMIZERS}")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument(
        "--table_learning_rate", type=float, default=0.05, help="SGD's, with adam+sgd"
    )
    parser.add_argument("--steps", type=positive_int, default=10, help="timed train steps")
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed first steps")
    parser.add_argument("--pool", type=positive_int, default=8, help="distinct batches")
    parser.add_argument("--adapt_ids", type=positive_int, default=100_000_000)
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated")
    parser.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    parser.add_argument(
        "--min_available_gib",
        type=float,
        default=1.5,
        help="kill a phase when the system's available memory falls below this",
    )
    parser.add_argument(
        "--dense_ops",
        action="store_true",
        help="only list the ops of a traced step that output a whole [input_dim, dim] tensor",
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--bits", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.hidden = [int(units) for units in args.hidden.split(",") if units]
    except ValueError:
        parser.error(f"`--hidden` must be comma-separated integers. Received: {args.hidden!r}")
    if args.optimizer not in OPTIMIZERS:
        parser.error(f"`--optimizer` must be one of {OPTIMIZERS}. Received: {args.optimizer!r}")
    args.phases = [phase for phase in args.phases.split(",") if phase]
    unknown = [phase for phase in args.phases if phase not in PHASES]
    if unknown or not args.phases:
        parser.error(f"`--phases` must name some of {PHASES}. Received: {','.join(unknown)!r}")
    return args


def main() -> None:
    args = parse_arguments()
    if args.phase is not None:
        print("RESULT " + json.dumps(run_phase(args)), flush=True)
        return
    if args.dense_ops:
        from keras_mpe.backend import IS_KERAS_3

        flavour = "Keras 3" if IS_KERAS_3 else "tf-keras"
        print(f"one train step, {flavour}, {args.optimizer}: {dense_ops(args)}")
        return
    table = args.input_dim * args.dim * 4
    results, bits = {}, None
    for phase in [p for p in PHASES if p in args.phases]:
        begin = time.perf_counter()
        returncode, stdout, stderr, watched = run_watched(
            child_arguments(args, phase, bits), args.min_available_gib
        )
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        if watched["killed"] or returncode != 0 or not lines:
            errors = [
                line for line in stderr.splitlines() if line.startswith("OOM") or "Error:" in line
            ]
            results[phase] = {
                **watched,
                "process_s": time.perf_counter() - begin,
                "error": errors[-1] if errors else f"exit code {returncode}",
            }
            continue
        results[phase] = json.loads(lines[-1][len("RESULT ") :])
        results[phase]["process_s"] = time.perf_counter() - begin
        bits = results[phase].get("bits", bits)

    first = next((r for r in results.values() if "flavour" in r), {})
    first = {"flavour": "?", "tf_version": "?", **first}
    print(
        f"scale, {first['flavour']} (TF {first['tf_version']}), input_dim={args.input_dim:,} "
        f"D={args.dim} (float32 table {table / 2**20:,.1f} MiB), {args.fields} fields, "
        f"batch {args.batch}, MLP {args.hidden}, {args.optimizer} lr {args.learning_rate}"
        f"{f' (table lr {args.table_learning_rate})' if args.optimizer == 'adam+sgd' else ''}, "
        f"jit={args.jit}, {args.steps} timed steps after {args.warmup}"
    )
    print(
        f"  {'phase':10s} {'process s':>9s} {'setup s':>8s} {'run s':>7s} "
        f"{'peak RSS':>10s} {'x table':>8s} {'step ms':>8s} {'x Embedding':>11s}  notes"
    )
    base = results.get("embedding", {}).get("step_s")
    for phase, r in results.items():
        if "error" in r:
            how = (
                f"killed {r['killed_at_s']:.0f} s in, when the system's available memory "
                f"fell below {args.min_available_gib} GiB"
                if r["killed"]
                else f"failed: {r['error'][:300]}"
            )
            print(
                f"  {phase:10s} {r['process_s']:9.1f}  {how}; its RSS had reached "
                f"{r['max_rss_bytes'] / 2**20:,.0f} MiB ({r['max_rss_bytes'] / table:.2f}x table)"
            )
            continue
        notes = ""
        if phase == "adapt":
            notes = (
                f"{r['ids'] / r['run_s'] / 1e6:.1f}M ids/s over {r['ids']:,} ids; "
                f"peak {(r['peak_rss_bytes'] - r['rss_before_bytes']) / 2**20:,.0f} MiB "
                "above the RSS before adapt"
            )
        if phase == "export":
            added = r["peak_rss_bytes"] - r["rss_before_bytes"]
            notes = (
                f"export adds {added / 2**20:,.0f} MiB = {added / table:.2f}x table to the "
                f"RSS before it ({r['rss_before_bytes'] / 2**20:,.0f} MiB); SavedModel "
                f"{r['saved_model_bytes'] / 2**20:,.1f} MiB; reloaded in {r['load_s']:.1f} s "
                f"(peak RSS {r['serve_peak_rss_bytes'] / 2**20:,.0f} MiB), "
                f"one batch served in {1000 * r['served_s']:.0f} ms, max |served - Keras| "
                f"{r['served_max_difference']:.1e}"
            )
        if phase == "search":
            notes = (
                f"peak {r['peak_rss_training_bytes'] / table:.2f}x table before "
                "PrecisionSearch ends (select, freeze, rewind, new optimizer)"
            )
        if phase in ("adapt", "export") and not r["peak_reset"]:
            notes += " (peak not resettable: includes the setup)"
        step = r.get("step_s")
        step_text = f"{1000 * step:8.1f}" if step else f"{'-':>8s}"
        ratio = f"{step / base:10.2f}x" if step and base else f"{'-':>11s}"
        print(
            f"  {phase:10s} {r['process_s']:9.1f} {r.get('setup_s', 0):8.1f} {r['run_s']:7.1f} "
            f"{r['peak_rss_bytes'] / 2**20:8,.0f} M {r['peak_rss_bytes'] / table:7.2f}x "
            f"{step_text} {ratio}  {notes}"
        )


if __name__ == "__main__":
    main()
