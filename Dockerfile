# The image launch/gke.py runs: guide_jax with its `tpu` extra (libtpu), nothing else.
#   docker build -t us-docker.pkg.dev/PROJECT/REPO/guide_jax:latest . && docker push ...
FROM python:3.11-slim
WORKDIR /guide_jax
# Dependencies first, so that a code change rebuilds only the last layers.
COPY setup.cfg pyproject.toml README.md ./
COPY guide_jax/__init__.py guide_jax/__init__.py
RUN pip install --no-cache-dir '.[tpu]' && pip uninstall -y guide_jax
COPY guide_jax guide_jax
COPY experiments experiments
RUN pip install --no-cache-dir --no-deps '.[tpu]'
ENTRYPOINT []
