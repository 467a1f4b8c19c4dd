"""Run one migration in a separate process, so tests can kill it (see migrate.failpoint).

usage: python -m tests.integration.migration.run_migration CONNINFO CONFIG_JSON TABLE BATCH_ROWS
"""

import json
import sys

from include.pgmaint.config import parse_config
from include.pgmaint.db import connect
from include.pgmaint.migrate import migrate_table

if __name__ == "__main__":
    conninfo, raw, table, batch_rows = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    config = parse_config(raw)
    with connect(conninfo, config.lock_budget) as conn:
        result = migrate_table(conn, conninfo, config, config.table(table), batch_rows=batch_rows)
    print(json.dumps({"outcome": result.outcome, "errors": result.errors}))
    sys.exit(0 if result.outcome == "success" else 1)
