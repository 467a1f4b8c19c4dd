"""The YAML configuration: its schema, its values, and how a file becomes a `Config`.

- `errors.py`   ConfigError, the one error (every problem found, each naming its field)
- `schema.py`   the JSON Schema and its findings worded by field path
- `model.py`    the frozen values (TableConfig, ServiceConfig, LockBudget, Preflight, Config)
- `escalation_settings.py`  the `escalation` block as typed settings (`Config.escalation`)
- `load.py`     parse_config / load_config: schema, then the checks a schema cannot express

Dependencies point one way: this package imports nothing of the engine but `intervals` and
`naming`; everything else imports it.
"""

from include.pgmaint.config.errors import ConfigError
from include.pgmaint.config.escalation_settings import EscalationSettings, Target, parse_escalation
from include.pgmaint.config.load import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LEASE_MINUTES,
    SERVICE_FIELDS,
    load_config,
    parse_config,
    read_config_file,
)
from include.pgmaint.config.model import (
    SERVICE_KINDS,
    Config,
    LockBudget,
    Preflight,
    ServiceConfig,
    TableConfig,
    parse_identifier,
    parse_qualified_name,
)
from include.pgmaint.config.schema import SCHEMA
from include.pgmaint.intervals import INTERVALS

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LEASE_MINUTES",
    "INTERVALS",
    "SCHEMA",
    "SERVICE_FIELDS",
    "SERVICE_KINDS",
    "Config",
    "ConfigError",
    "EscalationSettings",
    "LockBudget",
    "Preflight",
    "ServiceConfig",
    "TableConfig",
    "Target",
    "load_config",
    "parse_config",
    "parse_escalation",
    "parse_identifier",
    "parse_qualified_name",
    "read_config_file",
]
