# pgmaint's production image: Airflow 3.3.2 on Python 3.11 with the tested package set
# (requirements.txt) and this project laid out as an Astro project under AIRFLOW_HOME
# (dags/, include/, plugins/, airflow_settings.yaml). docs/deploy.md explains each line, the
# Astro Runtime variant, and what to set in the deployment (PGMAINT_CONFIG, connections, pool).
#
#   docker build -t pgmaint:$(git rev-parse --short HEAD) .
#
# One image for every component: scheduler, DAG processor, API server, triggerer, workers
# (Celery) and task pods (Kubernetes). Nothing here talks to a database at build time.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

# The base image's AIRFLOW_HOME; the project goes there, as in an Astro project.
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONPATH=/opt/airflow \
    PGMAINT_CONFIG=/opt/airflow/include/config/pgmaint.yaml

# The frozen, tested set (every line pinned with ==; it pins apache-airflow==3.3.2 itself, the
# base image's version, so pip keeps the image's Airflow). Its own layer: code changes do not
# reinstall packages.
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt

# The project (.dockerignore leaves out local state, tests, benchmarks and the git history).
COPY --chown=airflow:0 . /opt/airflow/
