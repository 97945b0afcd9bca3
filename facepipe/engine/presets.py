"""How small a face a digest finds: presets of `min_face_size`, the narrowest face (box width) in
the photo's full-size pixels. Light on purpose: the Dagster definitions import it.

- portraits 160 px: one or a few large faces a photo; the detector sees photos shrunk (fast).
- default 32 px: group photos. dlib's ResNet still recognises a face of 32 px: its nearest face in
  other photos is its own person's for 99.4 % of the labelled faces of ../shared/faces, 73 % of
  its same-person pairs pass the search threshold (84 % at full size) and no different-person
  pair does (benchmarks/face_size_recognition.py). It is also what the seed's detector (dlib,
  upsampling once) found.
- crowd 24 px: small faces in crowds; slower, and recognised less often (48 % of same-person pairs).
"""

from typing import Literal

Preset = Literal["portraits", "default", "crowd"]
PRESETS: dict[str, int] = {"portraits": 160, "default": 32, "crowd": 24}
DEFAULT_PRESET: Preset = "default"
DEFAULT_MIN_FACE_SIZE = PRESETS[DEFAULT_PRESET]
