"""Brainmarks models from the ``neurostorm`` package: NeuroSTORM (any pretrained source, the reference's hub
checkpoints, the tiny preset) and SwiFT. Brainmarks imports this module from its namespace package
``brainmarks.models``; what each name builds is documented in :mod:`neurostorm.brainmarks`."""

from brainmarks.models.base import Embeddings
from brainmarks.models.registry import register_model

from neurostorm.brainmarks import brainmarks_pair, hub_checkpoint, random_model


@register_model
def neurostorm_pkg(source=None, mask=None, max_windows=None, variant="0.5"):
    return brainmarks_pair(source or hub_checkpoint(variant), Embeddings, mask, max_windows)


@register_model
def neurostorm_pkg_0p8(source=None, mask=None, max_windows=None):
    return neurostorm_pkg(source, mask, max_windows, variant="0.8")


@register_model
def neurostorm_pkg_tiny(mask=None, max_windows=None):
    return brainmarks_pair(random_model("neurostorm-tiny"), Embeddings, mask, max_windows)


@register_model
def swift_pkg(source=None, mask=None, max_windows=None):
    return brainmarks_pair(source or random_model("swift-base"), Embeddings, mask, max_windows)


@register_model
def swift_pkg_tiny(mask=None, max_windows=None):
    return brainmarks_pair(random_model("swift-tiny"), Embeddings, mask, max_windows)
