"""Subprocess of tests/test_distribute_multiworker.py: one device vs mirrored on 2 CPUs.

Logical CPU devices must be configured before TensorFlow initialises, so this runs in a
fresh process: `python -m tests.equivalence_run OUT.json`. It trains the same small model
(same seed, same data, same global batch of 32) for STEPS steps under OneDeviceStrategy
and under MirroredStrategy over /cpu:0 and /cpu:1, and writes the per-step losses and the
final weights' largest difference to OUT.json.

The model has no BatchNormalization or Dropout: BatchNorm normalises each replica's half
batch with its own statistics and Dropout draws per replica, so those layers are
legitimately not identical under mirroring (docs/distributed.md).
"""

import json
import sys

import tfprod  # noqa: E402,F401  (sets the Keras 2 switch before TensorFlow is imported)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

STEPS = 12
GLOBAL_BATCH = 32
SEED = 7


def build_model():
    return tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        tf.keras.layers.Conv2D(4, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(16, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax", dtype="float32"),
    ])


class StepLosses(tf.keras.callbacks.Callback):
    """The loss of each training step (Keras logs a running mean; undo it)."""

    def __init__(self):
        super().__init__()
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))

    def losses(self):
        return [mean * (i + 1) - (self.means[i - 1] * i if i else 0.0)
                for i, mean in enumerate(self.means)]


def train(strategy, images, labels):
    tf.keras.utils.set_random_seed(SEED)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH).repeat()
    with strategy.scope():
        model = build_model()
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy())
    recorder = StepLosses()
    model.fit(dataset, epochs=1, steps_per_epoch=STEPS, callbacks=[recorder], verbose=0)
    return recorder.losses(), [w.numpy() for w in model.weights]


def main(output_path: str) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from tests.conftest import load_sample

    train_images, train_labels, _, _ = load_sample()
    images = (train_images[:GLOBAL_BATCH * STEPS] / 255.0).astype(np.float32)[..., None]
    labels = train_labels[:GLOBAL_BATCH * STEPS].astype(np.int64)
    one_losses, one_weights = train(tf.distribute.OneDeviceStrategy("/cpu:0"), images, labels)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored_losses, mirrored_weights = train(mirrored, images, labels)
    weight_difference = max(float(np.max(np.abs(a - b)))
                            for a, b in zip(one_weights, mirrored_weights))
    weight_scale = max(float(np.max(np.abs(a))) for a in one_weights)
    with open(output_path, "w", encoding="utf-8") as handle:
        json.dump({"replicas": mirrored.num_replicas_in_sync, "steps": STEPS,
                   "global_batch": GLOBAL_BATCH, "one_device_losses": one_losses,
                   "mirrored_losses": mirrored_losses,
                   "max_weight_difference": weight_difference,
                   "max_weight": weight_scale}, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
