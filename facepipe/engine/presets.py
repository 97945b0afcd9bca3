"""How small a face a digest finds: presets of `min_face_size`, the narrowest face (box width) in
the photo's full-size pixels. Light on purpose: the Dagster definitions import it.

- portraits 160 px: one or a few large faces a photo; the detector sees photos shrunk (fast).
- default 32 px: group photos. dlib's ResNet still recognises a face of 32 px (every labelled face
  of ../shared/faces still finds its own person first; 94 % of same-person pairs still pass the
  search threshold, against 97 % at full size: benchmarks/face_size_recognition.py), and it is what
  the seed's detector (dlib upsampling once) found.
- crowd 24 px: small faces in crowds; slower, and recognised less well (88 % of same-person pairs).
"""

from typing import Literal

Preset = Literal["portraits", "default", "crowd"]
PRESETS: dict[str, int] = {"portraits": 160, "default": 32, "crowd": 24}
DEFAULT_PRESET: Preset = "default"
DEFAULT_MIN_FACE_SIZE = PRESETS[DEFAULT_PRESET]
