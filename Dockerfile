# Qwen3-VL-2B-Instruct command line in a container. Build with `bash build.sh`
# (see docs/docker.md); run with `bash predict.sh ...` or directly:
#   docker run --rm IMAGE --help
#
# BASE_IMAGE: any image whose `python3` runs the pinned torch. The default is
# PyTorch's official CUDA 13.0 runtime image with torch 2.14.1 preinstalled, so
# `pip install` below only adds the smaller packages. CUDA 13.0 needs an NVIDIA
# driver 580 or newer on GPU hosts (build.sh picks the CUDA 12.6 image,
# pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime, for older drivers); without a
# GPU it runs on the CPU.
# The CPU-only variant (build.sh --cpu): BASE_IMAGE=python:3.11-slim-bookworm
# and TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu, from which torch and
# torchvision are installed first, so that requirements.txt finds them there
# and PyPI's CUDA wheels are never fetched.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

# Private package mirrors (pip's own variables); empty means PyPI.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Extra CA certificates (a TLS-intercepting proxy): docker/certs/*.crt|*.pem
# are appended to the base image's bundle, which pip, requests and the Hugging
# Face client then use, at build time and at run time.
COPY docker/certs/ /opt/qwenvl/certs/
RUN set -eu; \
    bundle=/opt/qwenvl/ca-bundle.pem; \
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then cat /etc/ssl/certs/ca-certificates.crt > "$bundle"; \
    else python3 -c 'import certifi, shutil, sys; shutil.copy(certifi.where(), sys.argv[1])' "$bundle"; fi; \
    for f in /opt/qwenvl/certs/*.crt /opt/qwenvl/certs/*.pem; do \
      if [ -f "$f" ]; then echo "adding CA certificates from $(basename "$f")"; cat "$f" >> "$bundle"; echo >> "$bundle"; fi; \
    done; \
    grep -q 'BEGIN CERTIFICATE' "$bundle" || { echo "no CA certificates found" >&2; exit 1; }
ENV SSL_CERT_FILE=/opt/qwenvl/ca-bundle.pem \
    REQUESTS_CA_BUNDLE=/opt/qwenvl/ca-bundle.pem \
    CURL_CA_BUNDLE=/opt/qwenvl/ca-bundle.pem \
    PIP_CERT=/opt/qwenvl/ca-bundle.pem

# Dependencies first: a change to the code below does not reinstall them.
COPY requirements.txt /opt/qwenvl/requirements.txt
ARG TORCH_INDEX_URL
# (PIP_BREAK_SYSTEM_PACKAGES: a base whose python3 is the distribution's own; a build
# argument, so the RUN steps below see it and the image does not keep it.)
ARG PIP_BREAK_SYSTEM_PACKAGES=1
RUN set -eu; \
    if [ -n "${TORCH_INDEX_URL:-}" ]; then \
      pins="$(grep -E '^(torch|torchvision)==' /opt/qwenvl/requirements.txt | cut -d' ' -f1 | tr '\n' ' ')"; pins="${pins% }"; \
      echo "installing $pins from $TORCH_INDEX_URL"; \
      python3 -m pip install --index-url "$TORCH_INDEX_URL" $pins; \
    fi
RUN python3 -m pip install -r /opt/qwenvl/requirements.txt && \
    python3 -c "import torch, torchvision, transformers, qwen_vl_utils, pypdfium2, av; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# A non-root user. Its home and the Hugging Face cache are writable by any
# uid, because predict.sh runs the container as the calling user.
RUN set -eu; \
    if awk -F: '$3 == 1000 { found = 1 } END { exit !found }' /etc/passwd; then useradd --create-home app; \
    else useradd --create-home --uid 1000 app; fi; \
    mkdir -p /cache/huggingface; \
    chmod 1777 /home/app /cache /cache/huggingface
ENV HOME=/home/app \
    HF_HOME=/cache/huggingface
VOLUME ["/cache/huggingface"]

# The code last. HF_TOKEN, HF_HUB_OFFLINE and QWENVL_MODEL are read from the
# container's environment (docker run -e ...; predict.sh passes them through).
COPY predict.py /opt/qwenvl/app/predict.py
COPY qwenvl/ /opt/qwenvl/app/qwenvl/
COPY tools/make_tiny_model.py tools/qwen_bpe.py tools/qwen3_vl_chat_template.jinja /opt/qwenvl/app/tools/
RUN python3 -m compileall -q /opt/qwenvl/app
USER app
WORKDIR /home/app
ENTRYPOINT ["python3", "/opt/qwenvl/app/predict.py"]
CMD ["--help"]
