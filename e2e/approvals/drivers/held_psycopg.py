"""psycopg 3 with a statement held for approval at its Bind: one JSON line per step on stdout.

Server-side binding (Parse, Bind, Describe, Execute, Sync through libpq). The first insert is approved by
the test, the second denied; then the session must go on. Connection settings come from libpq's variables.
"""

import json

import psycopg


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}, default=str), flush=True)


def run(step, fn):
    try:
        emit(step, ok=True, **(fn() or {}))
    except psycopg.Error as e:
        emit(step, ok=False, sqlstate=e.sqlstate, error=str(e).strip())


def main():
    notices = []
    conn = psycopg.connect(autocommit=True, connect_timeout=10)
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))

    def insert(amount):
        def step():
            cur = conn.execute("insert into payouts(amount, note) values (%s, %s)", (amount, "psycopg"))
            return {"rowcount": cur.rowcount, "notices": len(notices)}

        return step

    run("approved", insert(51))
    run("denied", insert(52))
    run("after", lambda: {"value": conn.execute("select 7").fetchone()[0]})
    conn.close()


main()
