"""Gates of the rebalancing search: a yes/no check an image must pass before the classifier judges it.

The authors' w+ search drops images without a detectable face before classifying them: elementwise
w+ mutations can break a face, and a race classifier still answers on a broken one, so its answer
would put a broken image into the balanced dataset. A gate is built by name (`create_gate('face')`);
a new one is a class decorated `@register_gate('name')` whose instances map uint8 NCHW images to a
boolean array.
"""
import os

import numpy as np

from .registry import registrar

_GATES = {}


class GateError(ValueError):
    """A gate cannot be built; the message names the fix."""


register_gate = registrar(_GATES, 'gate')


def list_gates():
    return ['none'] + sorted(_GATES)


def create_gate(name):
    """The gate called `name`, or None for 'none' (every image passes)."""
    if name != 'none' and name not in _GATES:
        raise GateError(f'gate={name!r}: choose one of {", ".join(list_gates())}')
    return None if name == 'none' else _GATES[name]()


@register_gate('face')
class OpenCVFaceGate:
    """At least one frontal face found by OpenCV's Haar cascade, whose file ships inside opencv-python:
    the offline stand-in for the authors' face detector. Faces smaller than `min_size` of the image
    side do not count: a StyleGAN face fills the frame, a tiny hit is texture."""

    def __init__(self, min_size=0.25, min_neighbors=5):
        try:
            import cv2
        except ImportError as err:
            raise GateError("gate=face needs OpenCV: pip install 'opencv-python-headless<5'") from err
        if not hasattr(cv2, 'CascadeClassifier'):  # OpenCV 5 moved the Haar cascades out of its main package
            raise GateError(f"gate=face needs OpenCV 4's Haar cascades, which OpenCV {cv2.__version__} lacks: "
                            f"pip install 'opencv-python-headless<5'")
        path = os.path.join(cv2.data.haarcascades, 'haarcascade_frontalface_default.xml')
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise GateError(f'gate=face: OpenCV could not read its face cascade {path}; reinstall OpenCV')
        self.cv2, self.min_size, self.min_neighbors = cv2, min_size, min_neighbors

    def __call__(self, images):
        images = np.asarray(images)
        # The cascade's smallest window is 24 px: small images are enlarged so that a face filling
        # a 16 or 32 px image is still seen.
        scale = max(1, -(-128 // min(images.shape[2:])))
        side = max(1, int(self.min_size * min(images.shape[2:]) * scale))
        found = []
        for img in images:
            gray = img[0] if img.shape[0] == 1 else self.cv2.cvtColor(np.ascontiguousarray(img[:3].transpose(1, 2, 0)),
                                                                      self.cv2.COLOR_RGB2GRAY)
            if scale > 1:
                gray = self.cv2.resize(gray, None, fx=scale, fy=scale, interpolation=self.cv2.INTER_LINEAR)
            faces = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                                  minSize=(side, side))
            found.append(len(faces) > 0)
        return np.array(found, dtype=bool)
