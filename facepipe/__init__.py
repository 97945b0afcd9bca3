"""facepipe: a face digest pipeline on Dagster.

The data flow: list images -> detect faces -> embed them -> store them in Qdrant.
`facepipe.engine` is plain Python (no Dagster), `facepipe.defs` is the Dagster layer over it.
"""
