# tusd-py: docker build -t tusd-py . && docker run -p 1080:1080 -v tusd-data:/data tusd-py
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    TUSD_PY_HOST=0.0.0.0 TUSD_PY_PORT=1080 TUSD_PY_UPLOAD_DIR=/data

WORKDIR /app
# Dependencies first, exactly as locked (hash-checked; scripts/lock resolves them for
# Python 3.11, this base image's): this layer is rebuilt only when the lock changes.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN apt-get update && apt-get install -y --no-install-recommends libdeflate0 libturbojpeg0 libspng0 libavif15 \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY tusd_py ./tusd_py
COPY storage ./storage
COPY thumbnailer ./thumbnailer
RUN pip install --no-cache-dir --no-deps . \
 && useradd --system --uid 10001 --home-dir /data tusd \
 && mkdir -p /data && chown tusd /data

USER tusd
VOLUME ["/data"]
EXPOSE 1080
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TUSD_PY_PORT', '1080'), timeout=2)"
ENTRYPOINT ["tusd-py", "serve"]
