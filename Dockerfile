# HistoDash — one image a lab can host (README: "Hosting for a lab").
#
# Build:  docker build -t histodash .
# Run:    printf 'HISTODASH_PASSWORD_HASH=%s\n' "$(python -m engine hash-password)" > histodash.env
#         docker run -d --name histodash -p 127.0.0.1:8501:8501 --env-file histodash.env \
#           -v /data/slides:/slides:ro -v histodash-models:/app/models -v histodash-data:/var/lib/histodash histodash
#         (an --env-file value is taken literally, '$' included; without a local venv, make the hash with
#         docker run --rm -it histodash python -m engine hash-password). OIDC instead of a password:
#         -v "$PWD/secrets.toml:/app/.streamlit/secrets.toml:ro" (see .streamlit/secrets.toml.example).
#
# GPU variant: docker build --build-arg TENSORFLOW="tensorflow[and-cuda]==2.21.0" -t histodash:gpu .
#              and run it with --gpus all (NVIDIA container toolkit on the host provides the driver;
#              TensorFlow's and-cuda extra brings the CUDA libraries). Same version as the CPU pin.
#
# Figure export: Debian's chromium is NOT installed. kaleido (server-side PNG/SVG of plotly figures) would
# need it: about 300 MB more and a whole browser inside a server image. Every figure already saves PNG from
# its camera button and the pages offer an offline HTML download whose camera button saves SVG, so the
# server-side export button reports "no usable Chrome/Chromium" here instead.
FROM python:3.11-slim-bookworm

# The TensorFlow requirement replacing requirements.txt's tensorflow-cpu pin (never both in one image).
ARG TENSORFLOW="tensorflow-cpu==2.21.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HISTODASH_HOME=/var/lib/histodash \
    HISTODASH_CACHE_DIR=/var/lib/histodash/cache \
    HISTODASH_JOBS_DIR=/var/lib/histodash/jobs \
    HISTODASH_WORK_DIR=/var/lib/histodash/sessions \
    HISTODASH_MODELS_DIR=/app/models \
    HISTODASH_SLIDES_DIR=/slides \
    HOME=/var/lib/histodash \
    MPLCONFIGDIR=/var/lib/histodash/matplotlib

WORKDIR /app
COPY requirements.txt ./
# Pinned: requirements.txt, with only its tensorflow-cpu line swapped for $TENSORFLOW.
RUN sed "s|^tensorflow-cpu==.*|${TENSORFLOW}|" requirements.txt > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The slide viewer's browser library (OpenSeadragon, pinned in package-lock.json) from the npm registry at
# build time, as `make run` does; Debian's nodejs/npm are build tools only, removed in the same layer.
COPY dashboard/components/viewer/frontend/package.json dashboard/components/viewer/frontend/package-lock.json dashboard/components/viewer/frontend/
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && npm ci --prefix dashboard/components/viewer/frontend --no-audit --no-fund --loglevel=error \
    && apt-get purge -y --auto-remove nodejs npm \
    && rm -rf /var/lib/apt/lists/* /root/.npm

COPY engine/ engine/
COPY dashboard/ dashboard/
COPY models/ models/
COPY .streamlit/config.toml .streamlit/config.toml

# An unprivileged user owns only what HistoDash writes: its home (cache, jobs, sessions, matplotlib's
# config: without a writable home every CLI run warned that matplotlib cannot write it) and the
# models folder (the Training page registers new models there). /slides is mounted read-only.
RUN groupadd --gid 10001 histodash \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/histodash --no-create-home --shell /usr/sbin/nologin histodash \
    && mkdir -p /var/lib/histodash/cache /var/lib/histodash/jobs /var/lib/histodash/sessions /var/lib/histodash/matplotlib /slides \
    && chown -R 10001:10001 /var/lib/histodash /app/models
USER 10001:10001

# /var/lib/histodash holds the cache, jobs and session folders (the ENV above) plus locks and the
# training cache: one volume keeps them all across container upgrades.
VOLUME ["/slides", "/app/models", "/var/lib/histodash"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() != b'ok')"]

# The README's start (`make run`: python -m streamlit run dashboard/server.py --server.address=$(HOST)
# --server.port=$(PORT)), listening on all interfaces inside the container: publish the port on the
# host's loopback behind a TLS reverse proxy, and set a login (else every page shows a warning banner).
# No outbound lookup at start: .streamlit/config.toml sets browser.serverAddress, so Streamlit does not ask an
# external service for this machine's public IP to print an "External URL" (it did, listening on 0.0.0.0).
CMD ["python", "-m", "streamlit", "run", "dashboard/server.py", "--server.address=0.0.0.0", "--server.port=8501"]
