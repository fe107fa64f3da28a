"""psycopg 3 through the Chaperone sidecar: a fixed script, one JSON line per step on stdout.

Connection settings come from libpq's own variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD =
the writer's identity token, PGSSLMODE); CHAPERONE_READER_TOKEN is the token of a subject the test's
policy only lets read. Every step prints {"step", "ok", ...}; a failed step prints "sqlstate" and
"error" and the script carries on, so the test sees every failure at once. Exit status 0 means the
script ran to the end, not that every step passed: the test asserts the steps.
"""

import json
import os
import threading
import time
import traceback
from decimal import Decimal

import psycopg

TABLE = "drivers_psycopg"
CHANNEL = "drivers_psycopg_channel"


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}, default=str), flush=True)


def run(step, fn):
    started = time.monotonic()
    try:
        result = fn() or {}
        emit(step, ok=True, ms=round((time.monotonic() - started) * 1000), **result)
    except psycopg.Error as e:
        emit(
            step,
            ok=False,
            ms=round((time.monotonic() - started) * 1000),
            sqlstate=e.sqlstate,
            error=str(e).strip(),
            type=type(e).__name__,
        )
    except Exception as e:  # noqa: BLE001 -- any failure is reported as the step's result
        emit(step, ok=False, error=repr(e), trace=traceback.format_exc(limit=3))


def connect(token):
    # Everything but the password comes from the environment; autocommit so each step is explicit.
    return psycopg.connect(password=token, autocommit=True, connect_timeout=10)


def main():
    writer_token = os.environ["PGPASSWORD"]
    reader_token = os.environ["CHAPERONE_READER_TOKEN"]
    conn = None

    def step_connect():
        nonlocal conn
        conn = connect(writer_token)
        row = conn.execute("select current_database(), pg_backend_pid(), current_setting('application_name')").fetchone()
        return {
            "libpq": psycopg.pq.version(),
            "psycopg": psycopg.__version__,
            "impl": psycopg.pq.__impl__,
            "serverVersion": conn.info.server_version,
            "database": row[0],
            "upstreamPid": row[1],
            "clientPid": conn.info.backend_pid,
            "applicationName": row[2],
        }

    run("connect", step_connect)

    def step_create():
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(f"create table {TABLE} (id int primary key, name text not null, amount numeric(10,2))")

    run("create", step_create)

    def step_insert_params():
        # Server-side binding: Parse/Bind/Describe/Execute/Sync with the values as parameters.
        cur = conn.cursor()
        cur.execute(f"insert into {TABLE} (id, name, amount) values (%s, %s, %s)", (1, "alpha", Decimal("1.50")))
        first = cur.rowcount
        # prepare=True: a named server-side prepared statement, then reused.
        cur.execute(f"insert into {TABLE} (id, name, amount) values (%s, %s, %s)", (2, "o'brien ü", None), prepare=True)
        cur.execute(f"insert into {TABLE} (id, name, amount) values (%s, %s, %s)", (3, "gamma", Decimal("-3.25")), prepare=True)
        return {"rowcounts": [first, cur.rowcount]}

    run("insert_params", step_insert_params)

    def step_executemany():
        # executemany runs in libpq pipeline mode: several Bind/Execute in flight before one Sync.
        cur = conn.cursor()
        cur.executemany(
            f"insert into {TABLE} (id, name, amount) values (%s, %s, %s)",
            [(i, f"batch-{i}", Decimal(i)) for i in range(20, 25)],
        )
        return {"rowcount": cur.rowcount}

    run("executemany", step_executemany)

    def step_pipeline():
        with conn.pipeline() as p:
            c1 = conn.execute(f"insert into {TABLE} (id, name) values (%s, %s) returning id", (30, "piped-30"))
            c2 = conn.execute(f"insert into {TABLE} (id, name) values (%s, %s) returning id", (31, "piped-31"))
            c3 = conn.execute(f"select count(*) from {TABLE} where id between %s and %s", (30, 39))
            p.sync()
            c4 = conn.execute("select %s::text", ("after-sync",))
        return {"returned": [c1.fetchone()[0], c2.fetchone()[0]], "count": c3.fetchone()[0], "after": c4.fetchone()[0]}

    run("pipeline", step_pipeline)

    def step_savepoint():
        with conn.cursor() as cur:
            cur.execute("begin")
            cur.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (10, "kept"))
            cur.execute("savepoint s1")
            cur.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (11, "rolled back"))
            inside = cur.execute(f"select count(*) from {TABLE} where id in (10, 11)").fetchone()[0]
            cur.execute("rollback to savepoint s1")
            cur.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (12, "after rollback"))
            status = conn.info.transaction_status.name
            cur.execute("commit")
            ids = [r[0] for r in cur.execute(f"select id from {TABLE} where id between 10 and 19 order by id")]
        return {"countInside": inside, "statusBeforeCommit": status, "ids": ids}

    run("savepoint", step_savepoint)

    def step_select():
        rows = conn.execute(f"select id, name, amount from {TABLE} where id < %s order by id", (10,)).fetchall()
        return {"rows": [[r[0], r[1], None if r[2] is None else str(r[2])] for r in rows]}

    run("select", step_select)

    def step_copy_in():
        cur = conn.cursor()
        with cur.copy(f"copy {TABLE} (id, name, amount) from stdin") as copy:
            for i in range(100, 103):
                copy.write_row((i, f"copied\t{i}", Decimal(i) / 4))
        count = conn.execute(f"select count(*), sum(amount) from {TABLE} where id >= 100").fetchone()
        return {"rowcount": cur.rowcount, "count": count[0], "sum": str(count[1])}

    run("copy_in", step_copy_in)

    def step_copy_out():
        cur = conn.cursor()
        rows = []
        with cur.copy(f"copy (select id, name from {TABLE} where id >= 100 order by id) to stdout") as copy:
            for row in copy.rows():
                rows.append(list(row))
        return {"rows": rows, "rowcount": cur.rowcount}

    run("copy_out", step_copy_out)

    def step_notify():
        listener = connect(writer_token)
        try:
            listener.execute(f"listen {CHANNEL}")
            conn.execute(f"notify {CHANNEL}, 'hello from psycopg'")
            conn.execute("select pg_notify(%s, %s)", (CHANNEL, "second"))
            got = [
                {"channel": n.channel, "payload": n.payload, "pid": n.pid}
                for n in listener.notifies(timeout=5, stop_after=2)
            ]
            # The notification carries the upstream backend's pid, the sender's pg_backend_pid().
            sender = conn.execute("select pg_backend_pid()").fetchone()[0]
            return {"notifications": got, "senderUpstreamPid": sender, "senderClientPid": conn.info.backend_pid}
        finally:
            listener.close()

    run("notify", step_notify)

    def step_cancel():
        # Cancel from another thread, as an application would; repeated (at most 5 times) in case the
        # first request lands before the statement has reached the server on a slow machine.
        done = threading.Event()
        sent = []

        def canceller():
            while not done.wait(0.5 if not sent else 1.0) and len(sent) < 5:
                conn.cancel_safe()
                sent.append(time.monotonic())

        thread = threading.Thread(target=canceller)
        thread.start()
        try:
            conn.execute("select pg_sleep(30)")
            result = {"cancelled": False}
        except psycopg.errors.QueryCanceled as e:
            result = {"cancelled": True, "sqlstate": e.sqlstate}
        finally:
            done.set()
            thread.join()
        result["cancelRequests"] = len(sent)
        result["after"] = conn.execute("select 'usable after cancel'").fetchone()[0]
        return result

    run("cancel", step_cancel)

    reader = None

    def step_reader_connect():
        nonlocal reader
        reader = connect(reader_token)
        return {"count": reader.execute(f"select count(*) from {TABLE}").fetchone()[0]}

    run("reader_connect", step_reader_connect)

    def denied(fn):
        def step():
            try:
                fn()
                return {"denied": False}
            except psycopg.Error as e:
                after = reader.execute("select %s::int + 1", (41,)).fetchone()[0]
                return {"denied": True, "sqlstate": e.sqlstate, "message": str(e).strip(), "after": after}

        return step

    # Extended protocol (server-side binding) and simple protocol (no parameters).
    run("denied_params", denied(lambda: reader.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (900, "x"))))
    run("denied_simple", denied(lambda: reader.execute(f"delete from {TABLE}")))

    def step_denied_in_pipeline():
        # A denial inside a pipeline aborts the rest of its sync group, as any PostgreSQL error would.
        results = {}
        try:
            with reader.pipeline() as p:
                c1 = reader.execute("select %s::text", ("before",))
                reader.execute(f"update {TABLE} set name = %s", ("denied",))
                reader.execute("select %s::text", ("skipped",))
                p.sync()
        except psycopg.Error as e:
            results["sqlstate"] = e.sqlstate
        results["before"] = c1.fetchone()[0]
        results["after"] = reader.execute("select %s::text", ("after",)).fetchone()[0]
        results["unchanged"] = reader.execute(f"select count(*) from {TABLE} where name = 'denied'").fetchone()[0]
        return results

    run("denied_pipeline", step_denied_in_pipeline)

    def step_close():
        reader.close()
        conn.execute(f"drop table {TABLE}")
        conn.close()

    run("close", step_close)


if __name__ == "__main__":
    main()
