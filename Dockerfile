# The Social API image.
#
#   docker build -t social-api .                 # the runtime image (the last stage)
#   docker build --target test -t social-api:test .   # the same install plus the test suite
#
# The runtime image holds the project's wheel and its runtime dependencies in /opt/venv, on the
# official python:3.13-slim, and nothing else: no test or dev extras, no build tools, no apt.
# It runs as UID 10001. With MONGODB_URL set it refuses to start without a strong SECRET_KEY.

# ---------------------------------------------------------------------------------------------
# builder: runtime dependencies and the project's wheel, installed into a virtualenv.
FROM python:3.13-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, read from pyproject.toml, so that a change to the code alone reuses this
# layer. requirements-test.txt is for the test stage below.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extra = p['optional-dependencies']; open('requirements.txt', 'w').write('\n'.join(p['dependencies']) + '\n'); open('requirements-test.txt', 'w').write('\n'.join(extra['test'] + extra['devstore']) + '\n')" \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt

# Then the project itself, as a wheel (hatchling runs in pip's isolated build environment, so
# it never lands in /opt/venv). README.md is the package's long description. The development
# store (devstore/ and its `devstore` extra, the MongoDB emulator) stays out: in the image the
# service runs on MONGODB_URL only, and says so if it is unset.
COPY README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl

# ---------------------------------------------------------------------------------------------
# test: the same virtualenv plus the `test` and `devstore` extras, the development store and
# the test suite. Not part of the runtime image. Run against the compose MongoDB with
# `docker compose --profile test run --rm tests`; without TEST_MONGODB_URL it uses the
# development store's MongoDB emulator.
FROM builder AS test

RUN /opt/venv/bin/pip install --no-cache-dir -r requirements-test.txt \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY devstore ./devstore
COPY docs ./docs
COPY tests ./tests

ENV PATH="/opt/venv/bin:$PATH"
USER 10001:10001
# No cache directory: /src is not writable by the test user.
CMD ["python", "-m", "pytest", "-p", "no:cacheprovider"]

# ---------------------------------------------------------------------------------------------
# runtime: the image that `docker build .` and the compose `api` service produce.
FROM python:3.13-slim AS runtime

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data \
    WEB_CONCURRENCY=1

# A system user with a fixed numeric UID/GID; /data is only used by the embedded development
# store (MONGODB_URL unset), and only by a single worker then.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
 && install -d -o 10001 -g 10001 -m 700 /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Liveness on /healthz with the standard library (slim has no curl), bypassing any HTTP proxy
# configured in the environment.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=4)"]

# `social-api serve` runs uvicorn with WEB_CONCURRENCY workers, with uvicorn's own proxy-header
# handling off (the app believes X-Forwarded-For/-Proto only from the addresses in
# TRUSTED_PROXIES: the login throttle counts per client address), and gives several workers a
# directory under /tmp for the metrics they share. It receives SIGTERM (docker stop) directly.
CMD ["social-api", "serve", "--host", "0.0.0.0", "--port", "8000"]
