# syntax=docker/dockerfile:1
#
# One image for every BDN process: `bdn agent` (the DaemonSet), `bdn mirror-server`
# (the mirror Deployment) and `bdn pull` (model pods' initContainers). The
# command is the first argument: `docker run IMAGE agent --help`.
#
# Build from the repository root:  docker build -t bdn:0.1.0 .
#
# No HEALTHCHECK: Kubernetes ignores it (the kubelet runs the manifests'
# probes instead), and the two servers listen on different ports, so one
# baked-in check would be wrong for one of them. See deploy/.

# Pinned to a patch release so a rebuild gets the same interpreter; bump it
# deliberately (and add an @sha256 digest where builds must be reproducible).
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what `pip install .` reads: the project file (its `readme` is README.md)
# and the package. Tests, docs and benchmarks stay out of the image.
COPY pyproject.toml README.md ./
COPY bdn ./bdn

# A virtual environment is one directory the runtime stage copies whole;
# pip, setuptools and the build tree stay behind in this stage. Every
# dependency ships wheels for amd64 and arm64, so no compiler is needed.
RUN python -m venv /opt/bdn \
    && /opt/bdn/bin/pip install --no-cache-dir . \
    && /opt/bdn/bin/bdn --version


FROM python:3.11.13-slim-bookworm

# A fixed numeric uid/gid: the manifests' runAsUser/runAsGroup, the agent's
# hostPath ownership and the model pods' access to the agent's socket (0660)
# all name 10001. Numeric USER lets the kubelet enforce runAsNonRoot.
RUN groupadd --system --gid 10001 bdn \
    && useradd --system --uid 10001 --gid bdn --create-home --home-dir /home/bdn \
       --shell /usr/sbin/nologin bdn

COPY --from=build /opt/bdn /opt/bdn

ENV PATH=/opt/bdn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
WORKDIR /home/bdn

ENTRYPOINT ["bdn"]
CMD ["--help"]
