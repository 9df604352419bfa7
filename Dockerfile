# syntax=docker/dockerfile:1
# The base image pinned by digest (both stages): python:3.11-slim as published. Refresh it
# with `docker buildx imagetools inspect python:3.11-slim` and change both lines together.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
WORKDIR /src
# what the image installs is pinned, with hashes: requirements.lock (pip-compile of
# pyproject.toml); the package itself is built without resolving anything more
COPY requirements.lock pyproject.toml README.md ./
COPY proxy ./proxy
COPY lua ./lua
COPY config ./config
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels --require-hashes -r requirements.lock \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home proxy \
    && mkdir -p /var/lib/extra-usage-proxy \
    && chown 10001:10001 /var/lib/extra-usage-proxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/extra_usage_proxy-*.whl \
    && rm -rf /wheels
COPY config/example.toml /etc/extra-usage-proxy/config.toml
# the fail_open journal (policy.journal_dir, relative) lives here, writable by the proxy user
WORKDIR /var/lib/extra-usage-proxy
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["extra-usage-proxy"]
CMD ["serve", "--config", "/etc/extra-usage-proxy/config.toml", "--host", "0.0.0.0"]
