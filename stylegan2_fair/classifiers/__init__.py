"""Auxiliary classifiers built by name: `create_classifier('deepface:race')`.

A spec is `SCHEME:ARGUMENT`:
    deepface:race, deepface:gender   DeepFace's PyTorch attribute models (weights from $DEEPFACE_HOME)
    torchscript:PATH                 a TorchScript classifier file (see torchscript.py for its contract)
    labels:PATH.pt                   a small CNN trained on a dataset's own labels (`stylegan2-fair
                                     train-classifier`)
A new backend is one module with a function decorated `@register_classifier('scheme')` that takes
(argument, device, img_resolution) and returns a `Classifier`.
"""
import click

from ..registry import registrar

from .base import Classifier, match_channels, resize_keep_aspect, resize_square

_BUILDERS = {}


# `@register_classifier('scheme')` on a function makes `scheme:ARGUMENT` specs build through it.
register_classifier = registrar(_BUILDERS, 'classifier scheme')


def list_classifiers():
    return sorted(_BUILDERS)


def create_classifier(spec, device='cpu', img_resolution=None):
    """Build, freeze and move to `device` the classifier named by `spec` (e.g. 'labels:clf.pt').

    `img_resolution` is the size of the images it will see; backends that must probe their network
    (torchscript without a declared resolution) use it.
    """
    if isinstance(spec, Classifier):
        return spec.freeze().to(device)
    scheme, sep, argument = str(spec).partition(':')
    if not sep or scheme not in _BUILDERS:
        raise ValueError(f'unknown classifier {spec!r}; give SCHEME:ARGUMENT with SCHEME one of '
                         f'{", ".join(list_classifiers())} (e.g. deepface:race, labels:clf.pt, '
                         f'torchscript:model.pt)')
    classifier = _BUILDERS[scheme](argument, device=device, img_resolution=img_resolution)
    return classifier.freeze().to(device)


# The --classifier option of train.py, shared by every hook that needs a classifier: hooks list this
# one object in their cli_options, and train.py applies it once.
CLASSIFIER_OPTION = click.option(
    '--classifier', metavar='SPEC', default=None,
    help='Auxiliary classifier for fairness methods: deepface:race, deepface:gender, labels:CLF.pt '
         '(stylegan2-fair train-classifier) or torchscript:MODEL.pt')

from . import deepface, small_cnn, torchscript  # noqa: E402  (registers the built-in schemes)

__all__ = ['CLASSIFIER_OPTION', 'Classifier', 'create_classifier', 'list_classifiers', 'match_channels',
           'register_classifier', 'resize_keep_aspect', 'resize_square']
