"""Fixtures for the `dag.test()` tests: the same loopback servers and services as the integration tests."""

from tests.fixtures.notify import clock, mailbox, notify_connections, webhooks  # noqa: F401
from tests.fixtures.services import airflow_api, http_service, make_config, target  # noqa: F401
