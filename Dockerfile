# One image for every facepipe service: the Dagster webserver and daemon, Celery workers, the HTTP API.
# Built from the repository root: docker build -f deploy/Dockerfile -t facepipe .
FROM python:3.11-slim

# OpenCV's and dlib's runtime libraries
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
# editable, as Dagster's project layout wants: definitions.py finds pyproject.toml's [tool.dg] above it
RUN pip install --no-cache-dir -e ".[postgres,celery]"

ENV DAGSTER_HOME=/opt/dagster
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/
