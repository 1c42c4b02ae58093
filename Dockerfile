# The code-location image: vr_assets, ffmpeg and the S3 client on Debian slim. The same image serves the code
# location (the command below; Dagster+ agents and the Helm chart supply their own) and, with the K8s or Docker
# run launcher, runs every video run's pod or container. Not built here (no Docker on this machine).
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/vr-assets
COPY pyproject.toml README.md ./
COPY vr_assets ./vr_assets
COPY prompts ./prompts
# the package with its S3 extra; dagster-postgres and dagster-k8s match dagster 1.13 (libraries 0.29.x)
RUN pip install --no-cache-dir ".[s3]" "dagster-postgres>=0.29,<0.30" "dagster-k8s>=0.29,<0.30"

ENV DAGSTER_HOME=/opt/dagster/dagster_home \
    VR_CONFIG=/etc/vr-assets/spec.yaml \
    PYTHONUNBUFFERED=1
RUN mkdir -p "$DAGSTER_HOME"

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "vr_assets.definitions"]
