"""Speed of Group-CAM augmentation (``python -m icasc.bench augment``): batched vs one image at a time.

Four things run interleaved (:func:`icasc.bench.interleaved_medians`) on the same batch, each with its own
copy of the same initial weights:

* ``plain``: one training step (forward, cross-entropy, backward, SGD step) on the batch;
* ``callback``: :meth:`GroupCAMAugmentation.apply` on the batch, then the same training step on the result;
* ``per_image``: the same augmentation done the way the authors' release does it (see
  :func:`release_like_augment`), then the same training step;
* ``passes``: only the ``G + 2`` no-grad forwards of the batch that the callback cannot avoid (one with the
  layer captured, ``G`` of perturbed images, one of blurred baselines), in the callback's chunks.

``essential_ratio = callback_s / (plain_s + passes_s)``: near 1 means the callback's bookkeeping (masks,
blur, composition, hooks) is negligible next to the model passes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from icasc.attention.capture import FeatureCapture
from icasc.bench.saliency import groupcam_essential_passes
from icasc.bench.timing import baseline_loss, device_sync, interleaved_medians, run_info, sgd_step
from icasc.callbacks.groupcam_augmentation import GroupCAMAugmentation
from icasc.callbacks.groupcam_blur import blur_size
from icasc.callbacks.saliency_blur import Augmented, binarize, compose_augmented
from icasc.models.module import ICASCModule
from icasc.saliency.blur import gaussian_blur
from icasc.saliency.groupcam import GroupCAM
from icasc.utils import eval_mode

__all__ = ["augment_benchmark", "release_like_augment"]


def release_like_augment(
    model: nn.Module, callback: GroupCAMAugmentation, images: torch.Tensor, target: torch.Tensor
) -> Augmented:
    """The callback's augmentation computed one image at a time, as the authors' release does.

    The release (``main.py`` of the Group-CAM repository) loops over the images of a batch and, for each,
    builds a new Group-CAM object (which registers new hooks), runs a forward of the single image, calls
    ``backward()`` of its class logit through the whole network, and scores its group masks in one forward.
    Here, for each image ``i``:

    1. a new ``GroupCAM(model, layer, groups, theta=None, gradient_weights=False)``;
    2. in eval mode, a forward of image ``i`` with grad enabled and a forward hook registered for this image
       only (:class:`~icasc.attention.capture.FeatureCapture`), then ``model.zero_grad()`` and
       ``backward()`` of the true-class logit into every parameter, as the release does (the gradients are
       not used: the fast setting has unit channel weights; the training step zeroes them);
    3. its group maps from the captured activation, its ``G`` perturbed images and its baseline scored in
       one no-grad forward of ``G + 1`` images, the map combined (:class:`~icasc.saliency.GroupCAM`);

    then, for the whole batch, the blur, the callback's binarisation and its composition. The result equals
    the callback's up to floating-point differences of batch-1 forwards (the map is the same fast-setting
    Group-CAM).

    Args:
        model: The classifier.
        callback: An attached callback, whose layer, groups, blur, threshold and composition are used.
        images: ``[B, C, H, W]`` batch.
        target: ``[B]`` classes.

    Returns:
        The augmented images, maps and masks of the batch.
    """
    if callback.groupcam is None:
        raise RuntimeError(
            "release_like_augment needs an attached callback: call callback.attach(model) first"
        )
    layer, size = callback.groupcam.layer, tuple(images.shape[-2:])
    kernel, sigma = blur_size(callback.blur_kernel, callback.blur_sigma, callback.blur_relative, *size)
    maps = []
    for i in range(images.shape[0]):
        x, t = images[i : i + 1], target[i : i + 1]
        gc = GroupCAM(
            model,
            layer,
            callback.groups,
            theta=None,
            blur_kernel=kernel,
            blur_sigma=sigma,
            gradient_weights=False,
        )
        with eval_mode(model), FeatureCapture(model, [layer]) as capture:
            logits = model(x)
            model.zero_grad(set_to_none=True)
            logits[0, int(t)].backward()
            features = capture.features[layer].detach()
        group_maps = gc.group_maps(features)
        maps.append(gc.combine(group_maps, gc.score_masks(x, group_maps, t), size))
    maps = torch.cat(maps)
    masks = binarize(maps, callback.threshold)
    blurred = gaussian_blur(images, kernel, sigma)
    return Augmented(compose_augmented(images, blurred, masks, callback.compose), maps, masks)


def augment_benchmark(
    backbone: str = "resnet18",
    image_size: int = 112,
    batch_size: int = 16,
    num_classes: int = 100,
    groups: int = 16,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    seed: int = 0,
    memory_budget_mb: float | None = None,
) -> dict[str, object]:
    """Median seconds per training step: plain, with the callback, and with the per-image augmentation.

    Args:
        backbone: Registered backbone name (random initial weights).
        image_size: Side of the square random images.
        batch_size: Images per batch.
        num_classes: Classes of the head; the targets are random.
        groups: Group-CAM groups ``G``.
        repeats: Timed rounds (each runs every side once, order alternating).
        warmup: Untimed rounds first.
        device: Torch device.
        seed: Seed of weights and data.
        memory_budget_mb: The callback's scoring chunk budget (``None``: Group-CAM's per-device default);
            the ``passes`` side uses the same chunks.

    Returns:
        ``plain_s``, ``callback_s``, ``per_image_s``, ``passes_s`` (the ``G + 2`` forwards alone),
        ``essential_s = plain_s + passes_s``, ``overhead = callback_s / plain_s``,
        ``speedup = per_image_s / callback_s``, ``essential_ratio = callback_s / essential_s``,
        ``mask_agreement`` (fraction of pixels where the callback's and the per-image binary masks agree,
        before any step), and the settings.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)

    def module(net: nn.Module | str) -> ICASCModule:
        return ICASCModule(net, num_classes, loss=baseline_loss(), val_attention=False).to(dev).train()

    plain = module(backbone)
    with_callback, per_image, passes_model = (module(copy.deepcopy(plain.backbone)) for _ in range(3))
    images = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    targets = torch.randint(0, num_classes, (batch_size,), device=dev)
    callback = GroupCAMAugmentation(groups=groups, seed=seed, memory_budget_mb=memory_budget_mb)
    callback.attach(with_callback.backbone)
    reference = GroupCAMAugmentation(groups=groups, seed=seed)
    reference.attach(per_image.backbone)

    batched = callback.apply({"image": images, "target": targets})
    looped = release_like_augment(per_image.backbone, reference, images, targets)
    mask_agreement = float((batched.masks == looped.masks).float().mean())

    plain_step, callback_step, per_image_step = (
        sgd_step(m, targets) for m in (plain, with_callback, per_image)
    )

    def with_augmentation() -> None:
        batch = {"image": images, "target": targets}
        callback.apply(batch)
        callback_step(batch["image"])

    passes = GroupCAM(
        passes_model.backbone,
        callback.groupcam.layer,
        groups,
        theta=None,
        gradient_weights=False,
        memory_budget_mb=memory_budget_mb,
    )
    essential = groupcam_essential_passes(passes, images, targets)
    sides = {
        "plain": lambda: plain_step(images),
        "callback": with_augmentation,
        "per_image": lambda: per_image_step(
            release_like_augment(per_image.backbone, reference, images, targets).images
        ),
        "passes": essential,
    }
    med = interleaved_medians(sides, repeats, warmup, device_sync(dev))
    layer, chunk_size = callback.groupcam.layer, callback.groupcam.chunk_size_for(images)
    callback.detach()
    reference.detach()
    essential_s = med["plain"] + med["passes"]
    return {
        "plain_s": med["plain"],
        "callback_s": med["callback"],
        "per_image_s": med["per_image"],
        "passes_s": med["passes"],
        "essential_s": essential_s,
        "overhead": med["callback"] / med["plain"],
        "speedup": med["per_image"] / med["callback"],
        "essential_ratio": med["callback"] / essential_s,
        "mask_agreement": mask_agreement,
        "backbone": backbone,
        "layer": layer,
        "image_size": image_size,
        "batch_size": batch_size,
        "num_classes": num_classes,
        "groups": groups,
        "chunk_size": chunk_size,
        "memory_budget_mb": memory_budget_mb,
        "repeats": repeats,
        "warmup": warmup,
        **run_info(dev),
    }
