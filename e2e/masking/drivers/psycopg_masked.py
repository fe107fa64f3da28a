"""psycopg 3 reading masked results through the Chaperone sidecar, in text and binary format.

Connection settings come from libpq's variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGSSLMODE);
CHAPERONE_TOKENS is a JSON object {label: identity token}, one per masking strategy under test. For each
label and format the script reads `select * from typed order by id` (server-side binding: Parse, Bind,
Describe, Execute) and, in binary, once more as a named prepared statement (prepare=True). Each read prints
one JSON line {"step": "<label>/<format>", "ok", "formats", "columns", "rows"}, values decoded by psycopg's
own loaders and written as JSON (bytes as {"hex"}, timestamps as epoch seconds, numerics and dates as their
text). A decoding error is a failed step: the test asserts every step.
"""

import datetime
import decimal
import json
import os
import traceback
import uuid

import psycopg

QUERY = "select * from typed order by id"


def plain(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime):
        return {"epoch": v.timestamp()}
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"hex": bytes(v).hex()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return {"unexpected": type(v).__name__, "repr": repr(v)}


def read(conn, binary, prepare):
    with conn.cursor(binary=binary) as cur:
        cur.execute(QUERY, prepare=prepare)
        rows = cur.fetchall()
        result = cur.pgresult
        return {
            "formats": [result.fformat(i) for i in range(result.nfields)],
            "columns": [d.name for d in cur.description],
            "rows": [[plain(v) for v in row] for row in rows],
        }


def main():
    tokens = json.loads(os.environ["CHAPERONE_TOKENS"])
    for label, token in tokens.items():
        try:
            conn = psycopg.connect(password=token, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            print(json.dumps({"step": f"{label}/connect", "ok": False, "sqlstate": e.sqlstate, "error": str(e)}))
            continue
        with conn:
            for fmt, binary, prepare in (("text", False, None), ("binary", True, None), ("binary-prepared", True, True)):
                step = f"{label}/{fmt}"
                try:
                    # prepare=True twice: the second execution reuses the named statement (no new Describe).
                    if prepare:
                        read(conn, binary, prepare)
                    out = read(conn, binary, prepare)
                    print(json.dumps({"step": step, "ok": True, **out}), flush=True)
                except psycopg.Error as e:
                    print(json.dumps({"step": step, "ok": False, "sqlstate": e.sqlstate, "error": str(e)}), flush=True)
                except Exception as e:  # noqa: BLE001 -- a decoding failure is the step's result
                    print(
                        json.dumps({"step": step, "ok": False, "error": repr(e), "trace": traceback.format_exc(limit=4)}),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
