"""The face engine: plain Python, no Dagster.

images.py    find and decode photos
profiles/    model profiles over deepface's registry (detect, align, embed)
faces.py     the faces of one image, and of a chunk of images
"""
