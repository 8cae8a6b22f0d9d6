"""Image augmentation of the training batches (data.augmentation), in tf.data only.

The transforms run in the Trainer's training input pipeline, on batches of transformed
images; they are never part of the model, so the exported serving signatures (and the
eval split) see the images unchanged.

Images are grayscale or RGB (data.image_channels); every transform works on either.

- horizontal_flip: mirror left-right with probability 1/2 (photos; not for digits);
- translate: random shifts of up to that fraction of the height and width, the same as
  a random crop of a zero-padded image;
- rotation_degrees, contrast: random rotation and contrast per image;
- mixup_alpha / cutmix_alpha: per example, a partner image from the same batch and a
  weight drawn from Beta(alpha, alpha) blend the images (mixup) or paste a box of the
  partner (cutmix). The labels become soft class distributions [batch, num_classes]:
  the trainer then compiles with `recipes.SmoothedCrossEntropy`, which takes soft
  labels as they are (and integer labels one-hot), and an accuracy on their argmax.
"""

from typing import Optional

import tensorflow as tf

from tfprod.pipeline import config as config_lib


def _beta(shape, alpha: float, seed: Optional[int]):
    """Samples Beta(alpha, alpha) as a ratio of two Gamma(alpha) draws."""
    first = tf.random.gamma(shape, alpha, seed=seed)
    second = tf.random.gamma(shape, alpha, seed=None if seed is None else seed + 1)
    return first / (first + second)


def mixup(images, labels, alpha: float, num_classes: int, seed: Optional[int] = None):
    """Blends each image and its one-hot label with a random partner from the batch.

    Args:
      images: [N, height, width, channels] float images.
      labels: [N] integer class ids.
      alpha: the Beta distribution's parameter (small alpha: weights near 0 or 1).
      num_classes: width of the soft labels.
      seed: op seed, for reproducible draws.

    Returns:
      (mixed images, soft labels [N, num_classes] whose rows sum to 1).
    """
    batch = tf.shape(images)[0]
    weight = _beta([batch], alpha, seed)
    partner = tf.random.shuffle(tf.range(batch), seed=seed)
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    image_weight = tf.reshape(weight, [-1, 1, 1, 1])
    mixed_images = image_weight * images + (1.0 - image_weight) * tf.gather(images, partner)
    label_weight = tf.reshape(weight, [-1, 1])
    mixed_labels = label_weight * one_hot + (1.0 - label_weight) * tf.gather(one_hot, partner)
    return mixed_images, mixed_labels


def cutmix(images, labels, alpha: float, num_classes: int, seed: Optional[int] = None):
    """Pastes a random box of a partner image into each image; labels weighted by area.

    Arguments and result as for `mixup`; the label weight of the partner is the share of
    the image its box covers (after clipping the box to the image).
    """
    batch = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    float_height, float_width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    keep = _beta([batch], alpha, seed)
    cut = tf.sqrt(1.0 - keep)
    center_y = tf.random.uniform([batch], 0.0, float_height, seed=seed)
    center_x = tf.random.uniform([batch], 0.0, float_width, seed=None if seed is None else seed + 2)
    top = tf.clip_by_value(center_y - cut * float_height / 2, 0.0, float_height)
    bottom = tf.clip_by_value(center_y + cut * float_height / 2, 0.0, float_height)
    left = tf.clip_by_value(center_x - cut * float_width / 2, 0.0, float_width)
    right = tf.clip_by_value(center_x + cut * float_width / 2, 0.0, float_width)
    rows = tf.reshape(tf.range(float_height), [1, -1, 1]) + 0.5
    cols = tf.reshape(tf.range(float_width), [1, 1, -1]) + 0.5
    inside = ((rows >= top[:, None, None]) & (rows < bottom[:, None, None])
              & (cols >= left[:, None, None]) & (cols < right[:, None, None]))
    mask = tf.cast(inside, images.dtype)[..., None]  # 1 where the partner's pixels go
    partner = tf.random.shuffle(tf.range(batch), seed=seed)
    mixed_images = images * (1.0 - mask) + tf.gather(images, partner) * mask
    partner_share = tf.reduce_mean(mask, axis=[1, 2, 3])[:, None]
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    mixed_labels = (1.0 - partner_share) * one_hot + partner_share * tf.gather(one_hot, partner)
    return mixed_images, mixed_labels


def _geometric_layers(augmentation: config_lib.AugmentationConfig, seed: int):
    layers = []
    if augmentation.horizontal_flip:
        layers.append(tf.keras.layers.RandomFlip("horizontal", seed=seed + 3))
    if augmentation.translate > 0:
        layers.append(tf.keras.layers.RandomTranslation(
            augmentation.translate, augmentation.translate, fill_mode="constant", seed=seed))
    if augmentation.rotation_degrees > 0:
        layers.append(tf.keras.layers.RandomRotation(
            augmentation.rotation_degrees / 360.0, fill_mode="constant", seed=seed + 1))
    if augmentation.contrast > 0:
        layers.append(tf.keras.layers.RandomContrast(augmentation.contrast, seed=seed + 2))
    return layers


def augment_dataset(dataset: tf.data.Dataset,
                    experiment: config_lib.ExperimentConfig) -> tf.data.Dataset:
    """Adds data.augmentation to a dataset of (flat or shaped image batch, label batch).

    Returns the dataset unchanged when no augmentation is configured. Apply it to the
    training dataset only.
    """
    augmentation = experiment.data.augmentation
    if not augmentation.enabled:
        return dataset
    data = experiment.data
    seed = augmentation.seed if augmentation.seed is not None else experiment.trainer.seed
    layers = _geometric_layers(augmentation, seed)

    def augment(images, labels):
        shaped = tf.reshape(images, [-1, data.image_height, data.image_width,
                                     data.image_channels])
        low, high = tf.reduce_min(images), tf.reduce_max(images)
        for layer in layers:
            shaped = layer(shaped, training=True)
        # Contrast can push values out of the input's range; keep the model's input range.
        shaped = tf.clip_by_value(shaped, low, high)
        if augmentation.mixup_alpha > 0:
            shaped, labels = mixup(shaped, labels, augmentation.mixup_alpha, data.num_classes)
        elif augmentation.cutmix_alpha > 0:
            shaped, labels = cutmix(shaped, labels, augmentation.cutmix_alpha, data.num_classes)
        return tf.reshape(shaped, tf.shape(images)), labels

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
