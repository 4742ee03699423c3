"""Grad-CAM heatmaps (Selvaraju et al., 2017): where in the image a model looked for a class.

The map of class c is ReLU(sum_k alpha_k A_k), where A_k are the feature maps of the last
convolution and alpha_k the spatial mean of d y_c / d A_k. We take y_c before the softmax,
as the paper does: the gradient of a softmax probability vanishes as the model grows
confident (p -> 1), and confident predictions are the ones worth explaining.

`method="hirescam"` (Draelos and Carin, 2020) weighs every position by its own gradient,
ReLU(sum_k dy_c/dA_k * A_k), instead of the spatial mean. This matters for scratch_cnn:
its head is Flatten and Dense, with a weight for every position, and averaging those
gradients over space can cancel them. Trained to tell a blob's position (top left: class
1, elsewhere: class 0), scratch_cnn's Grad-CAM maps were all zero while HiResCAM's lit up
the top left (tests/test_gradcam.py). Grad-CAM's averaging fits heads that pool over space
first, as vgg19_head's global max pooling does.

The difficulty in Keras is vgg19_head: its last convolution (`block5_conv4`) lives inside
a nested model ("vgg19"), a graph of its own. `Model(model.inputs, nested_layer.output)` is
"Graph disconnected", since that tensor belongs to the nested graph, not the outer one. So
the model is cut at the convolution, level by level: on each level, a "pre" model from the
level's inputs to where the next level (or the convolution) starts, and a "post" model from
where it ends to the level's outputs. Running the pre models in, the post models back out,
gives the prediction with the convolution's output as a tensor in between, which the
gradient tape can hold. All the pieces share the model's layers, so they share its weights.
Keras 2 builds a model from an intermediate tensor by cloning the graph nodes after it:
the original model predicts and saves as before, though each call leaves the layers after
the cut one more (unused) call record, so explain many images in one call, not one by one.

The map is stretched over the whole image, as Grad-CAM implementations do. For scratch_cnn
that is a slight approximation: its valid convolutions centre the 9x9 cells of a 64 px
input on pixels 15 to 48, so evidence off the centre is drawn a little further out.

Not for clinical use: a heatmap shows what the model used, not where disease is.
"""

from __future__ import annotations

import numpy as np

from cxr import keras_lib

# Images per gradient pass: bounds memory (VGG19's first block at 224 px is 12 MB an image).
BATCH_SIZE = 16
METHODS = ("gradcam", "hirescam")


def last_conv_layer(model) -> tuple[str, ...]:
    """The path of layer names to the model's last convolution with a 4-D output.

    Nested models are searched too: ("block3_conv2",) for scratch_cnn, ("vgg19",
    "block5_conv4") for vgg19_head. "Last" follows `model.layers`, which Keras keeps in
    topological order.
    """
    path = _last_conv_path(model)
    if path is None:
        raise ValueError(f"model {model.name!r} has no convolution layer with a 4-D output")
    return path


def find_layer(model, name: str) -> tuple[str, ...]:
    """The path of layer names to the layer called `name`, in the model or a nested model.

    "vgg19/block5_conv4" names a path directly; a bare name must be found exactly once.
    """
    if "/" in name:
        path = tuple(name.split("/"))
        _layer_at(model, path)  # raises if it is not there
        return path
    found = list(_paths_named(model, name))
    if len(found) != 1:
        where = "not found" if not found else f"ambiguous: {', '.join('/'.join(p) for p in found)}"
        raise ValueError(f"layer {name!r} in model {model.name!r}: {where}")
    return found[0]


def grad_cam(model, images: np.ndarray, class_indices: np.ndarray, layer_name: str | None = None,
             method: str = "gradcam", batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Grad-CAM maps, float32 (n, H, W) in [0, 1], one per image, for the class asked of each.

    `images` is what the models take: float32 (n, H, W, 1) of 0-255 values. Each map is
    upsampled bilinearly to the image size and divided by its maximum; a map with no
    positive evidence for its class stays all zero. `layer_name` overrides the layer
    (default: `last_conv_layer`), as a bare name or a "nested/layer" path. `method` is
    "gradcam" or "hirescam" (see the module docstring: prefer it for scratch_cnn).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    images = np.asarray(images, dtype=np.float32)
    class_indices = np.asarray(class_indices)
    _check_inputs(model, images, class_indices)
    path = find_layer(model, layer_name) if layer_name else last_conv_layer(model)
    pres, posts, logits = _split_at(model, path)
    maps = [_grad_cam_batch(pres, posts, logits, images[i:i + batch_size], class_indices[i:i + batch_size],
                            method)
            for i in range(0, len(images), batch_size)]
    if not maps:
        return np.zeros((0, *images.shape[1:3]), np.float32)
    return _normalize(np.concatenate(maps))


def overlay(image_gray_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The gray image with the heatmap over it in the jet colormap: RGB uint8 (H, W, 3).

    `alpha` is the heatmap's weight, 0 (image only) to 1 (heatmap only).
    """
    from matplotlib import colormaps  # the registry only: no pyplot, no backend

    image = np.asarray(image_gray_uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.ndim != 2 or heatmap.shape != image.shape:
        raise ValueError(f"overlay needs a gray (H, W) image and an (H, W) heatmap, "
                         f"got {image.shape} and {heatmap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colored = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    gray = np.repeat(image.astype(np.float32)[..., None], 3, axis=-1)
    return np.clip((1.0 - alpha) * gray + alpha * colored + 0.5, 0, 255).astype(np.uint8)


def _check_inputs(model, images: np.ndarray, class_indices: np.ndarray) -> None:
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or any(e is not None and e != got for e, got in zip(expected, images.shape[1:])):
        raise ValueError(f"images must have shape (n, {', '.join(map(str, expected))}), got {images.shape}")
    if class_indices.shape != (len(images),) or not np.issubdtype(class_indices.dtype, np.integer):
        raise ValueError(f"class_indices must be {len(images)} integers, got {class_indices.dtype} "
                         f"of shape {class_indices.shape}")
    classes = model.output_shape[-1]
    if len(class_indices) and (class_indices.min() < 0 or class_indices.max() >= classes):
        raise ValueError(f"class_indices must be in [0, {classes}), got {class_indices.min()} "
                         f"to {class_indices.max()}")


def _grad_cam_batch(pres, posts, logits, images: np.ndarray, class_indices: np.ndarray,
                    method: str) -> np.ndarray:
    import tensorflow as tf

    x = tf.convert_to_tensor(images)
    for pre in pres:
        x = pre(x, training=False)
    with tf.GradientTape() as tape:
        # The convolution's output is the only thing watched: gradients flow from the
        # score back to it, never into the (possibly frozen) weights or the images.
        tape.watch(x)
        features = x
        for post in posts:
            x = post(x, training=False)
        scores = tf.gather(logits(x), class_indices, axis=1, batch_dims=1)
    # A vector target means the gradient of its sum; each image's score depends only on its
    # own features (inference mode: no batch statistics), so that is each image's gradient.
    gradients = tape.gradient(scores, features)
    if method == "gradcam":
        gradients = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # alpha_k: (n, 1, 1, k)
    cams = tf.nn.relu(tf.reduce_sum(gradients * features, axis=-1, keepdims=True))
    return tf.image.resize(cams, images.shape[1:3], method="bilinear")[..., 0].numpy()


def _normalize(maps: np.ndarray) -> np.ndarray:
    # After upsampling, so that every nonzero map reaches exactly 1.
    peaks = maps.max(axis=(1, 2), keepdims=True)
    out = np.zeros_like(maps, dtype=np.float32)
    np.divide(maps, peaks, out=out, where=peaks > 0)
    return np.clip(out, 0.0, 1.0)


def _split_at(model, path: tuple[str, ...]):
    """(pre models outside in, post models inside out, logits function) for the layer at `path`."""
    keras = keras_lib.keras()
    stop, logits = _before_softmax(model)
    pres, posts = [], []
    container, ends = model, stop
    for depth, name in enumerate(path):
        node = _node_in(container, container.get_layer(name))
        innermost = depth == len(path) - 1
        # At the convolution the cut is at its output; at a nested model, at its input,
        # so that the next level's pre model goes on from there.
        cut = node.outputs if innermost else node.keras_inputs
        pres.append(keras.Model(container.inputs, _single(cut)))
        posts.append(keras.Model(_single(node.outputs), ends))
        if not innermost:
            container = container.get_layer(name)
            ends = container.outputs
    return pres, posts[::-1], logits


def _before_softmax(model):
    """The tensor to stop the graph at, and the function from it to the class scores.

    A final softmax (its own layer or a Dense's activation) is left out: Grad-CAM wants the
    scores before it (see the module docstring). Any other ending is used as it is.
    """
    keras = keras_lib.keras()
    last = model.layers[-1]
    is_softmax = getattr(getattr(last, "activation", None), "__name__", None) == "softmax"
    if len(model.outputs) != 1 or not is_softmax:
        return model.outputs, lambda x: x
    node = _node_in(model, last)
    inputs = _single(node.keras_inputs)
    if isinstance(last, keras.layers.Activation):
        return inputs, lambda x: x
    if isinstance(last, keras.layers.Dense):
        import tensorflow as tf

        def dense_logits(x):
            logits = tf.matmul(x, last.kernel)
            return logits + last.bias if last.use_bias else logits
        return inputs, dense_logits
    return model.outputs, lambda x: x


def _single(tensors):
    flat = tensors if isinstance(tensors, (list, tuple)) else [tensors]
    if len(flat) != 1:
        raise ValueError(f"Grad-CAM follows one tensor through the model, found {len(flat)} at a cut")
    return flat[0]


def _node_in(container, layer):
    """The call of `layer` that belongs to `container`'s graph.

    Not simply `layer.output`: a layer called in several graphs (a shared base, or a layer
    after an earlier cut, which Keras re-calls when building the post model) has several
    calls, and `.output` refuses to pick one. Walking back from the container's outputs
    finds the call its graph made.
    """
    found, seen = [], set()
    stack = list(container.outputs)
    while stack:
        history = stack.pop()._keras_history
        node = history.layer.inbound_nodes[history.node_index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.layer is layer:
            found.append(node)
        stack.extend(node.keras_inputs)
    if len(found) != 1:
        raise ValueError(f"layer {layer.name!r} is called {len(found)} times in {container.name!r}: "
                         "Grad-CAM needs exactly one call")
    return found[0]


def _is_model(layer) -> bool:
    return isinstance(layer, keras_lib.keras().Model)


def _last_conv_path(model) -> tuple[str, ...] | None:
    keras = keras_lib.keras()
    # The 2-D convolutions (Conv2DTranspose included) are the ones with 4-D outputs; asking
    # the type, not `output_shape`, since that fails on a layer with several calls.
    conv_types = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    for layer in reversed(model.layers):
        if _is_model(layer):
            inner = _last_conv_path(layer)
            if inner is not None:
                return (layer.name, *inner)
        elif isinstance(layer, conv_types):
            return (layer.name,)
    return None


def _paths_named(model, name: str):
    for layer in model.layers:
        if layer.name == name:
            yield (layer.name,)
        if _is_model(layer):
            yield from ((layer.name, *inner) for inner in _paths_named(layer, name))


def _layer_at(model, path: tuple[str, ...]):
    layer = model
    for name in path:
        if not _is_model(layer):
            raise ValueError(f"layer path {'/'.join(path)!r}: {layer.name!r} is not a model")
        layer = layer.get_layer(name)  # ValueError if there is no such layer
    return layer
