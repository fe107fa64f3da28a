"""libpq's extended-protocol COPY FROM STDIN through the sidecar, then denied simple queries.

PQsendQueryParams("copy ... from stdin") sends Parse/Bind/Describe/Execute/Sync; PostgreSQL ignores a
Sync received in copy-in mode, and libpq sends a second Sync after CopyDone, so the server answers two
Syncs with one ReadyForQuery. A proxy that expects one ReadyForQuery per Sync falls one behind. After
the copy this script sends the same denied DELETE twice as a simple Query: both must come back 42501
and the table must keep its rows. Uses psycopg's libpq wrapper (psycopg.pq), i.e. libpq itself.
Connection settings come from PG* variables (PGPASSWORD = a token the policy lets COPY FROM and
SELECT, nothing else); the table in CHAPERONE_COPY_TABLE exists and is empty. One JSON line per step.
"""

import json
import os

import psycopg
from psycopg import pq

TABLE = os.environ["CHAPERONE_COPY_TABLE"]


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def simple(pgconn, sql):
    """PQexec: the simple Query protocol."""
    r = pgconn.exec_(sql.encode())
    sqlstate = r.error_field(pq.DiagnosticField.SQLSTATE)
    return {
        "status": pq.ExecStatus(r.status).name,
        "command": (r.command_status or b"").decode(),
        "sqlstate": None if sqlstate is None else sqlstate.decode(),
        "error": (r.error_message or b"").decode().strip(),
    }


def main():
    conn = psycopg.connect(password=os.environ["PGPASSWORD"], autocommit=True, connect_timeout=10)
    pgconn = conn.pgconn

    pgconn.send_query_params(f"copy {TABLE} (id) from stdin".encode(), None)
    first = pgconn.get_result()
    pgconn.put_copy_data(b"1\n2\n3\n")
    pgconn.put_copy_end()
    done = pgconn.get_result()
    assert pgconn.get_result() is None
    emit(
        "copy_in_extended",
        ok=done.status == pq.ExecStatus.COMMAND_OK,
        started=pq.ExecStatus(first.status).name,
        command=(done.command_status or b"").decode(),
    )

    for attempt in (1, 2):
        emit(f"denied_delete_{attempt}", ok=True, **simple(pgconn, f"delete from {TABLE}"))

    count = pgconn.exec_(f"select count(*) from {TABLE}".encode()).get_value(0, 0)
    emit("count", ok=True, count=int(count))
    conn.close()


if __name__ == "__main__":
    main()
