# One image for every modelfarm process; docker-compose.yml picks the command.
FROM python:3.11-slim
ARG TORCH=torch==2.13.0
WORKDIR /srv/modelfarm
RUN pip install --no-cache-dir "${TORCH}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir .
ENV MODELFARM_DATA_DIR=/data MODELFARM_API_HOST=0.0.0.0
VOLUME /data
EXPOSE 8000 5555
CMD ["modelfarm", "api"]
