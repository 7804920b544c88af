# Production image: one image for the gateway, the Celery worker and the agent.
# The database and the broker are external (see docker-compose.yml); the embedded Postgres is
# only the default when SPECGATE_DATABASE_URL is unset.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml ./
# The product only: the lab (demo, benchmarks, conformance, training) stays in the source tree.
COPY specgate ./specgate
COPY gateway ./gateway
COPY agent_worker ./agent_worker
COPY tool_adapters ./tool_adapters
COPY migrations ./migrations
RUN pip install . \
    && useradd --create-home --uid 10001 specgate

USER specgate
ENV SPECGATE_HOME=/home/specgate/.specgate

EXPOSE 8080
CMD ["specgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
