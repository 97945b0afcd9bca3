"""The face engine: plain Python, no Dagster.

listing.py     find photos in a folder and read their bytes (within a byte budget); light
sources.py     photos in S3: list a prefix, read an object; light
images.py      decode photos (within a pixel budget)
presets.py     how small a face a digest finds (min_face_size)
detection.py   see each photo at the scale its min_face_size needs, in tiles when large
profiles/      model profiles over deepface's registry (detect, align, embed), each with its facts
faces.py       the faces of one image, and of a chunk of images
results.py     what a chunk hands on (each photo's faces, or its error); light
planning.py    which listed photos to digest, cut into chunks; light
clustering.py  faces into people
weights.py     where model weights live
"""
