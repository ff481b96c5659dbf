"""MPE on TensorFlow's distributed engine: one model on any `tf.distribute` strategy.

The same CTR model (a `MixedPrecisionEmbedding` table, two dense layers) runs the MPE
search (`PrecisionSearch` with a compression target and a backup directory), the
retrain at the frozen bits and the packed export, under the strategy chosen:

    --strategy one_device         one device (the reference the others must match)
    --strategy mirrored           MirroredStrategy: every local GPU (with --smoke: two
                                  logical CPU devices)
    --strategy multi_worker       MultiWorkerMirroredStrategy, one process per worker
    --strategy parameter_server   ParameterServerStrategy (tf-keras only: run with
                                  TF_USE_LEGACY_KERAS=1); the table is sharded across
                                  the parameter servers by a variable partitioner

Which Keras flavour supports what: Keras 3 runs one_device, mirrored and multi_worker;
tf-keras (TF_USE_LEGACY_KERAS=1, which TFRS uses) runs all four. Keras 3 does not
support ParameterServerStrategy.

    python examples/distributed.py --strategy mirrored --smoke
    TF_USE_LEGACY_KERAS=1 python examples/distributed.py --strategy parameter_server --smoke

`--smoke` runs a tiny problem on a local cluster on 127.0.0.1: for multi_worker it
starts two worker processes of this script on free ports (each bounded in time, both
ended if one fails); for parameter_server it starts two workers and two parameter
servers in this process, which is the coordinator.

On a real cluster, every task runs this script with the same arguments (no --smoke)
and its own `TF_CONFIG`, e.g. for multi_worker on two hosts:

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}'    # index 1 on host2

Worker 0 is the chief: it alone writes the search backup and the export (the other
workers export to a temporary directory, which they delete: every worker must call
`export_saved_model`, as for `model.save`, since reading distributed variables may
need all of them). `--backup_dir` must be on a file system all workers share. For
parameter_server, the cluster has "chief" (the coordinator, which runs `fit`),
"worker" and "ps" tasks; workers and parameter servers only serve:

    TF_CONFIG='{"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222",
                "host2:2222"], "ps": ["host3:2222", "host4:2222"]},
                "task": {"type": "ps", "index": 0}}'

The script prints the chosen bits and the compression; `--weights_file` saves the
model's weights after the retrain, for comparing strategies.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

STRATEGIES = ("one_device", "mirrored", "multi_worker", "parameter_server")
WORKER_TIMEOUT = 240  # seconds, for each process of a local multi-worker run
FIELDS, DIM, BATCH = 4, 8, 256


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=STRATEGIES, default="one_device")
    parser.add_argument("--smoke", action="store_true", help="tiny run on a local cluster")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per phase")
    parser.add_argument("--target_compression", type=float, default=8.0)
    parser.add_argument("--backup_dir", help="search backup (default: a temporary one)")
    parser.add_argument("--export_dir", help="SavedModel directory (default: temporary)")
    parser.add_argument("--weights_file", help="write the retrained weights here (.npz)")
    parser.add_argument("--local_worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_local_multi_worker(argv: list[str]) -> None:
    """Runs this script as two MultiWorkerMirroredStrategy workers on 127.0.0.1."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config))
        processes.append(
            subprocess.Popen([sys.executable, __file__, *argv, "--local_worker"], env=env)
        )
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        while any(p.poll() is None for p in processes):
            failed = [p.returncode for p in processes if p.returncode not in (None, 0)]
            if failed:
                raise SystemExit(f"a worker failed with exit code {failed[0]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the workers did not finish within {WORKER_TIMEOUT} s")
            time.sleep(0.2)
        if any(p.returncode for p in processes):
            raise SystemExit(f"worker exit codes {[p.returncode for p in processes]}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.strategy == "multi_worker" and args.smoke and not args.local_worker:
        run_local_multi_worker(sys.argv[1:] if argv is None else argv)
        return

    import tensorflow as tf  # after TF_CONFIG is set

    if args.strategy == "mirrored" and args.smoke:
        # two logical CPU devices, before TensorFlow initialises its devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    strategy = make_strategy(tf, args)
    if strategy is None:  # a parameter server or worker task: it only serves
        return
    train(tf, strategy, args)


def make_strategy(tf, args):
    if args.strategy == "one_device":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if args.strategy == "mirrored":
        devices = ["/cpu:0", "/cpu:1"] if args.smoke else None
        return tf.distribute.MirroredStrategy(devices)
    if args.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    from keras_mpe.backend import IS_KERAS_3

    if IS_KERAS_3:
        raise SystemExit(
            "--strategy parameter_server needs tf-keras (Keras 3 does not support "
            "ParameterServerStrategy): run with TF_USE_LEGACY_KERAS=1."
        )
    if args.smoke:
        resolver = local_parameter_server_cluster(tf)
    else:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if resolver.task_type in ("worker", "ps"):
            server = tf.distribute.Server(
                resolver.cluster_spec(),
                job_name=resolver.task_type,
                task_index=resolver.task_id,
                protocol=resolver.rpc_layer or "grpc",
                start=True,
            )
            server.join()
            return None
    # the table is split across both parameter servers (every variable of 2 or more rows)
    partitioner = tf.distribute.experimental.partitioners.FixedShardsPartitioner(2)
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def local_parameter_server_cluster(tf):
    """Two workers and two parameter servers in this process, on 127.0.0.1."""
    ports = free_ports(4)
    cluster = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{port}" for port in ports[:2]],
            "ps": [f"127.0.0.1:{port}" for port in ports[2:]],
        }
    )
    # with the default inter-op threads (the core count) in-process workers can hang
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=8)
    local_parameter_server_cluster.servers = [
        tf.distribute.Server(
            cluster, job_name=job, task_index=index, protocol="grpc", config=config
        )
        for job in ("worker", "ps")
        for index in range(2)
    ]
    return tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")


def train(tf, strategy, args) -> None:
    import keras_mpe
    from keras_mpe.backend import keras
    from keras_mpe.datasets import synthetic_ctr

    rows, epochs = (5_120, 2) if args.smoke else (200_000, args.epochs)
    data = synthetic_ctr(rows=rows, fields=FIELDS, ids_per_field=500 if args.smoke else 5_000)
    x, y = data.train
    x, y = x[: len(x) // BATCH * BATCH].astype("int32"), y[: len(x) // BATCH * BATCH]
    parameter_server = isinstance(strategy, tf.distribute.ParameterServerStrategy)
    is_chief = not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or (
        strategy.extended.should_checkpoint
    )
    print(f"strategy: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replicas")

    keras.utils.set_random_seed(0)
    with strategy.scope():
        layer = keras_mpe.MixedPrecisionEmbedding(data.vocabulary_size, DIM, num_groups=16)
        layer.adapt(x)
        inputs = keras.Input(shape=(FIELDS,), dtype="int32")
        hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(layer(inputs)))
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss="binary_crossentropy",
            metrics=[keras.metrics.AUC(name="auc")],
        )

    if parameter_server:
        shards = [variable.device for variable in layer.embeddings.variables]
        print(f"table shards: {len(shards)} on {', '.join(shards)}")
    steps = len(x) // BATCH
    if parameter_server:
        # workers draw batches independently; fit needs a dataset function
        def dataset_fn(context):
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0)
            return dataset.repeat().batch(BATCH)

        train_data = keras.utils.experimental.DatasetCreator(dataset_fn)
        fit_args = {"steps_per_epoch": steps}
    else:
        # a fixed order and global batch, so every strategy sees the same steps
        train_data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
        fit_args = {}

    backup_dir = args.backup_dir or tempfile.mkdtemp(prefix="mpe-backup-")
    search = keras_mpe.PrecisionSearch(
        monitor="auc",
        target_compression=args.target_compression,
        backup_dir=backup_dir,
        # the default floors the step sizes every 50 steps; the smoke run has 32
        quantizer_range=keras_mpe.QuantizerRange(every=5) if args.smoke else "floor",
        verbose=0,
    )
    model.fit(train_data, epochs=epochs, callbacks=[search], verbose=0, **fit_args)
    report = search.reports[layer.name]
    print(f"bits: {' '.join(str(b) for b in layer.group_bits.numpy())}")
    print(f"compression: {report['compression_ratio']:.1f}x with overhead")
    model.fit(train_data, epochs=epochs, verbose=0, **fit_args)
    x_test = tf.constant(data.test[0].astype("int32"))
    predictions = model(x_test, training=False).numpy()
    auc = keras.metrics.AUC()
    auc.update_state(data.test[1], predictions)
    print(f"test AUC: {float(auc.result()):.4f}")

    export_dir = args.export_dir or os.path.join(tempfile.mkdtemp(prefix="mpe-export-"), "1")
    if not is_chief:  # every worker exports; only the chief keeps it
        export_dir = tempfile.mkdtemp(prefix="mpe-worker-export-")
    keras_mpe.export_saved_model(model, export_dir, overwrite=True)
    if is_chief:
        served = tf.saved_model.load(export_dir).signatures["serving_default"]
        difference = np.abs(served(x_test)["output_0"].numpy() - predictions).max()
        print(f"export: {export_dir}, max |SavedModel - Keras| {difference:.2e}")
        if args.weights_file:
            np.savez(args.weights_file, *[np.asarray(w) for w in model.get_weights()])
    else:
        shutil.rmtree(export_dir)
    if is_chief:
        print(f"backup files left: {len(os.listdir(backup_dir))}")


if __name__ == "__main__":
    main()
