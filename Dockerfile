# The Airflow runtime for docker-compose.yaml: the official image plus this repository's locked
# dependencies. Code (dags, plugins, include, config, tools, airflow_settings.yaml) is bind-mounted by
# the compose file rather than copied, so an edit shows up without a rebuild and the image only changes
# when requirements.txt or constraints.txt do. The version is the apache-airflow pin in constraints.txt
# (tests/test_docker_compose.py fails when the two drift apart).
FROM apache/airflow:3.3.2-python3.11

COPY requirements.txt constraints.txt /tmp/requirements/
# requirements.txt pins apache-airflow itself, so resolving the extras cannot swap the image's Airflow.
RUN pip install --no-cache-dir \
        -r /tmp/requirements/requirements.txt \
        -c /tmp/requirements/constraints.txt

# An empty named volume takes the ownership of the directory it is mounted on: these must exist in the
# image, owned by the airflow user, or the components cannot write task logs / the generated password.
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/airflow/reports
