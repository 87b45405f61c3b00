# One image for the API, the precompute job and Locust: the same code, the same pinned dependencies.
# The light model is trained at build time so a container starts serving without a registry volume.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY models ./models
COPY serving ./serving
COPY loadtests ./loadtests
COPY tuning ./tuning
COPY hybridserve ./hybridserve
RUN pip install . \
    && hybridserve train --profile light --registry /app/registry

# Inside a container the server must listen on every interface to be reachable from the network;
# outside one, Settings.host keeps the loopback default.
ENV HYBRIDSERVE_REGISTRY=/app/registry
EXPOSE 8000 8089
USER nobody
CMD ["hybridserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
