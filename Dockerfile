# HistoDash — one image a lab can host. Build: docker build -t histodash .
# Run:   docker run -p 8501:8501 -v /data/slides:/slides:ro -v histodash-data:/var/lib/histodash histodash
# GPU variant: build with --build-arg TF_PACKAGE="tensorflow[and-cuda]==2.21.0" and run with --gpus all
# (TensorFlow's CUDA extra brings the CUDA libraries; the NVIDIA container toolkit provides the driver).
FROM python:3.11-slim

ARG TF_PACKAGE=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HISTODASH_HOME=/var/lib/histodash \
    HISTODASH_CACHE_DIR=/var/lib/histodash/cache \
    HISTODASH_JOBS_DIR=/var/lib/histodash/jobs \
    HISTODASH_WORK_DIR=/var/lib/histodash/sessions \
    HISTODASH_MODELS_DIR=/app/models \
    HISTODASH_SLIDES_DIR=/slides

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt \
    && if [ -n "$TF_PACKAGE" ]; then pip uninstall -y tensorflow-cpu && pip install "$TF_PACKAGE"; fi

COPY engine/ engine/
COPY dashboard/ dashboard/
COPY models/ models/
COPY .streamlit/ .streamlit/
COPY Makefile README.md ./

RUN useradd --create-home --uid 1000 histodash \
    && mkdir -p /var/lib/histodash /slides \
    && chown -R histodash /var/lib/histodash /app/models
USER histodash

VOLUME ["/var/lib/histodash", "/app/models"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() != b'ok')"

# Same start as `make run`, listening on all interfaces inside the container.
CMD ["python", "-m", "streamlit", "run", "dashboard/app.py", "--server.address=0.0.0.0", "--server.port=8501"]
