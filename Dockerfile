# The docket image: every docket component (instances, Clerk, API, topic setup) runs from
# it with its own command (docker-compose.yml). Kafka runs from the official
# apache/kafka image, not from this one, so no Java here.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DOCKET_DATA_ROOT=/data

WORKDIR /src
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p app/domains agents tables chaos launcher docket_apps \
    && touch app/__init__.py app/domains/__init__.py agents/__init__.py tables/__init__.py chaos/__init__.py \
       launcher/__init__.py docket_apps/__init__.py \
    && pip install . && pip uninstall -y docket && rm -rf app agents tables chaos launcher docket_apps build
COPY app ./app
COPY agents ./agents
COPY tables ./tables
# `docket divergences` reads the topic with chaos/replay.py
COPY chaos ./chaos
# `docket stack topics` and `docket stack health` (docker-compose.yml), and the
# components' --wait (launcher/stack.py wait_for_topics_cli)
COPY launcher ./launcher
# `faust -A docket_apps.instance worker` (README, Faust's command line)
COPY docket_apps ./docket_apps
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 docket \
    && mkdir -p /data && chown docket /data

USER docket
WORKDIR /home/docket
VOLUME ["/data"]
CMD ["docket", "--help"]
