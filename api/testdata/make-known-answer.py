#!/usr/bin/env python3
"""Known-answer vectors for Chaperone's audit format, computed OUTSIDE the product.

Run once; the output (known-answer.json next to this script) is checked in and
api/src/known-answer.test.ts holds the TypeScript code to it. Nothing here imports or
runs Chaperone code: RFC 8785 (JCS) is written out below from the RFC's rules, hashes come
from hashlib, Ed25519 signatures from the `cryptography` package (RFC 8032 signatures are
deterministic, so a JWS over fixed bytes with a fixed key is a fixed string).

    python3 api/testdata/make-known-answer.py > api/testdata/known-answer.json

With `rehash`, it reads audit records as JSON lines on stdin and prints, for each, the sha256 of its
RFC 8785 form without `hash` (e2e/audit/known-answer.test.ts re-hashes records a live sidecar wrote):

    python3 api/testdata/make-known-answer.py rehash < records.jsonl

Every key is derived from a fixed label, so re-running reproduces the file byte for byte.
The keys are test keys: published here, trusted by nothing but these tests.
"""
import base64
import decimal
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

GENESIS = "sha256:" + "0" * 64


# --- RFC 8785 -----------------------------------------------------------------------------------------

def jcs_number(x):
    """ECMAScript Number::toString (ECMA-262 7.1.12.1), which RFC 8785 section 3.2.2.3 prescribes."""
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("JCS has no NaN or Infinity")
    if x == 0:
        return "0"  # also -0
    if x < 0:
        return "-" + jcs_number(-x)
    # repr() is the shortest digit string that reads back as x, the closest one when several are
    # shortest: the same s, k and n the ECMAScript algorithm asks for.
    sign, digits, exponent = decimal.Decimal(repr(x)).normalize().as_tuple()
    s = "".join(str(d) for d in digits)
    k = len(s)
    n = exponent + k
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + s
    e = n - 1
    mantissa = s if k == 1 else s[0] + "." + s[1:]
    return mantissa + "e" + ("+" if e >= 0 else "-") + str(abs(e))


SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def jcs_string(value):
    """RFC 8785 section 3.2.2.2: JSON.stringify's escaping; everything else is literal UTF-8."""
    out = ['"']
    for ch in value:
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError("lone surrogate")
        if ch in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jcs(value):
    """RFC 8785: members sorted by their names' UTF-16 code units (section 3.2.3), no whitespace."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return jcs_number(value)
    if isinstance(value, str):
        return jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value.keys(), key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs_string(k) + ":" + jcs(value[k]) for k in keys) + "}"
    raise TypeError(type(value))


def sha256_prefixed(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- JCS cases ----------------------------------------------------------------------------------------
# Each input is JSON text (so both sides parse the same text); `canonical` is what RFC 8785 makes of it.
JCS_INPUTS = [
    (
        "RFC 8785 section 3.2.3: property sorting by UTF-16 code units",
        '{"\\u20ac":"Euro Sign","\\r":"Carriage Return","\\ufb33":"Hebrew Letter Dalet With Dagesh",'
        '"1":"One","\\ud83d\\ude00":"Emoji: Grinning Face","\\u0080":"Control",'
        '"\\u00f6":"Latin Small Letter O With Diaeresis"}',
    ),
    (
        "nested objects and arrays, whitespace dropped, array order kept",
        '{ "b" : [ 3, 2, {"z": null, "a": true} ], "a" : { "y": false, "x": [] }, "": {} }',
    ),
    (
        "string escaping: short escapes, \\u00xx for other controls, literal non-ASCII and U+2028",
        '["quote\\" backslash\\\\ slash/", "\\b\\f\\n\\r\\t", "\\u0000\\u0001\\u001f\\u007f", '
        '"\\u00e9\\u20ac\\ud83d\\ude00 \\u2028\\u2029", "</script>"]',
    ),
    (
        "numbers: ECMAScript formatting",
        "[0, -0, 1, -1, 1.5, 0.1, 100, 1e21, 1e20, 123456789012345680000, 1e-6, 1e-7, 0.000001234, "
        "1.2345e-7, 9007199254740993, 4.35, 333333333.33333329, 5e-324, 1.7976931348623157e308, -2.5e-10]",
    ),
]

# --- audit records ------------------------------------------------------------------------------------
IDENTITY = {
    "subject": "chaperone:agent:report-writer",
    "issuer": "https://chaperone-operator.chaperone-system.svc",
    "kind": "ai-agent",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:ci"],
    "chain": [
        {"subject": "system:serviceaccount:ci:nightly-report", "issuer": "https://kubernetes.default.svc", "kind": "ci"}
    ],
    "tokenHash": "sha256:" + "ab" * 32,
}

RECORD_BODIES = [
    {
        "v": 1,
        "seq": 1,
        "time": "2026-11-27T10:00:00.000001Z",
        "type": "session.start",
        "identity": IDENTITY,
        "source": {"address": "127.0.0.1:50312", "applicationName": "psql", "user": "agent", "database": "orders"},
    },
    {
        "v": 1,
        "seq": 2,
        "time": "2026-11-27T10:00:01.250000Z",
        "type": "command.decision",
        "command": {
            "id": 1,
            "kind": "sql",
            "text": "select name, \"ünïcode €\" from orders where note = $1 -- 😀\n\tand id < 10",
            "parameters": ["O'Brien \u0001", "NULL"],
            "statementKinds": ["select"],
            "relations": ["public.orders"],
        },
        "decision": {
            "result": "allow",
            "policy": "default/orders",
            "rule": "reads",
            "bundleDigest": "sha256:" + "0123456789abcdef" * 4,
            "reasons": ["rule reads matched"],
        },
    },
    {
        "v": 1,
        "seq": 3,
        "time": "2026-11-27T10:00:01.251337Z",
        "type": "command.outcome",
        "command": {"id": 1, "kind": "sql"},
        "outcome": {"status": "success", "code": "SELECT 9", "rows": 9, "durationMicros": 1337},
    },
    {
        "v": 1,
        "seq": 4,
        "time": "2026-11-27T10:00:02.000000Z",
        "type": "command.decision",
        "command": {"id": 2, "kind": "sql", "text": "delete from orders", "truncated": False, "statementKinds": ["delete"]},
        "decision": {"result": "deny", "policy": "default/orders", "rule": "default"},
    },
    {
        "v": 1,
        "seq": 5,
        "time": "2026-11-27T10:00:02.000100Z",
        "type": "command.outcome",
        "command": {"id": 2, "kind": "sql"},
        "outcome": {"status": "denied", "code": "42501", "message": "chaperone: permission denied by policy default/orders, rule default"},
    },
    {"v": 1, "seq": 6, "time": "2026-11-27T10:00:03.000000Z", "type": "session.end"},
]


def chain():
    records = []
    prev = GENESIS
    for body in RECORD_BODIES:
        unhashed = dict(body, prevHash=prev)
        canonical_unhashed = jcs(unhashed)
        digest = sha256_prefixed(canonical_unhashed.encode("utf-8"))
        sealed = dict(unhashed, hash=digest)
        records.append(
            {
                "unhashed": unhashed,
                "canonicalWithoutHash": canonical_unhashed,
                "hash": digest,
                "canonical": jcs(sealed),
            }
        )
        prev = digest
    return records


# --- Ed25519 statements ------------------------------------------------------------------------------

def key(label):
    seed = hashlib.sha256(label.encode("ascii")).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = b64u(public)
    # RFC 7638 thumbprint: the required members of an OKP key, in lexicographic order, no whitespace.
    kid = b64u(hashlib.sha256(('{"crv":"Ed25519","kty":"OKP","x":"%s"}' % x).encode("ascii")).digest())
    return {
        "private": private,
        "publicJwk": {"crv": "Ed25519", "kty": "OKP", "x": x, "kid": kid},
        "privateJwk": {"crv": "Ed25519", "kty": "OKP", "x": x, "d": b64u(seed), "kid": kid},
    }


def compact_jws(payload_text, k, typ):
    """RFC 7515 compact serialisation; the protected header in the member order jose writes it (alg, kid, typ)."""
    header = '{"alg":"EdDSA","kid":%s,"typ":%s}' % (json.dumps(k["publicJwk"]["kid"]), json.dumps(typ))
    signing_input = b64u(header.encode("utf-8")) + "." + b64u(payload_text.encode("utf-8"))
    signature = k["private"].sign(signing_input.encode("ascii"))
    return signing_input + "." + b64u(signature)


def main():
    records = chain()
    sidecar = key("chaperone known-answer sidecar signing key")
    authority = key("chaperone known-answer audit authority key")
    last = records[-1]
    head = {
        "typ": "chaperone.dev/chain-head/v1",
        "sessionId": "6f1c2a4e-0b1d-4c8e-9a57-2d3b4c5d6e7f",
        "object": "orders/report-writer-7x2kq-1",
        "seq": last["unhashed"]["seq"],
        "hash": last["hash"],
        "signedAt": "2026-11-27T10:00:03.500Z",
    }
    head_payload = jcs(head)
    certificate = {
        "typ": "chaperone.dev/signer-certificate/v1",
        "keyId": sidecar["publicJwk"]["kid"],
        "x": sidecar["publicJwk"]["x"],
        "pod": {"namespace": "orders", "name": "report-writer-7x2kq", "uid": "0b6a8f1e-3c2d-4e5f-8a9b-1c2d3e4f5a6b"},
        "serviceAccount": "system:serviceaccount:orders:report-writer",
        "issuedAt": "2026-11-27T09:59:58Z",
    }
    checkpoint = {
        "typ": "chaperone.dev/checkpoint/v1",
        "time": "2026-11-27T10:05:00Z",
        "index": 7,
        "previous": GENESIS,
        "namespaces": [],
        "sessions": [
            {
                "object": head["object"],
                "sessionId": head["sessionId"],
                "part": 1,
                "seq": head["seq"],
                "hash": head["hash"],
            }
        ],
    }
    certificate_jws = compact_jws(jcs(certificate), authority, "chaperone-cert+jws")
    checkpoint_jws = compact_jws(jcs(checkpoint), authority, "chaperone-checkpoint+jws")

    # An identity token: an Ed25519-signed JWT of a test token exchange, valid until 2100, with a delegation
    # chain. Sidecars believe chains (and system: subjects other than the cluster's) only from the exchange, so
    # the token carries what the exchange's tokens carry: the subject's issuer and the exchange link.
    issuer = key("chaperone known-answer token issuer key")
    claims = {
        "iss": "https://known-answer.chaperone.test",
        "sub": "system:serviceaccount:ci:known-answer",
        "aud": "chaperone",
        "iat": 1767225600,
        "exp": 4102444800,
        "act": {"sub": "system:serviceaccount:ci:nightly", "iss": "https://kubernetes.default.svc"},
        "chaperone.dev/subject-issuer": "https://kubernetes.default.svc",
        "chaperone.dev/exchange": {"id": "known-answer", "record": "known-answer"},
    }
    token_header = '{"alg":"EdDSA","kid":%s,"typ":"JWT"}' % json.dumps(issuer["publicJwk"]["kid"])
    token_input = b64u(token_header.encode("utf-8")) + "." + b64u(jcs(claims).encode("utf-8"))
    token = token_input + "." + b64u(issuer["private"].sign(token_input.encode("ascii")))
    refused = "chaperone-known-answer: not a token, refused; its hash is still logged"

    vectors = {
        "about": (
            "Known answers computed outside Chaperone by api/testdata/make-known-answer.py (python3 hashlib and "
            "json, the cryptography package for Ed25519). Checked in as data; api/src/known-answer.test.ts and "
            "e2e/audit/known-answer.test.ts hold the product to them. Test keys only."
        ),
        "jcs": [{"name": name, "input": text, "canonical": jcs(json.loads(text))} for name, text in JCS_INPUTS],
        "genesisHash": GENESIS,
        "records": records,
        "head": {
            "privateJwk": sidecar["privateJwk"],
            "publicJwk": sidecar["publicJwk"],
            "payload": head,
            "payloadText": head_payload,
            "jws": compact_jws(head_payload, sidecar, "chaperone-head+jws"),
        },
        "authority": {
            "privateJwk": authority["privateJwk"],
            "publicJwk": authority["publicJwk"],
            "certificate": certificate,
            "certificateJws": certificate_jws,
            "checkpoint": checkpoint,
            "checkpointJws": checkpoint_jws,
            "checkpointDigest": sha256_prefixed(checkpoint_jws.encode("ascii")),
        },
        "tokens": {
            "issuer": claims["iss"],
            "jwks": {"keys": [dict(issuer["publicJwk"], alg="EdDSA", use="sig")]},
            "valid": {"token": token, "claims": claims, "hash": sha256_prefixed(token.encode("utf-8"))},
            "refused": {"token": refused, "hash": sha256_prefixed(refused.encode("utf-8"))},
        },
    }
    json.dump(vectors, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def rehash():
    for line in sys.stdin:
        if line.strip() == "":
            continue
        record = json.loads(line)
        record.pop("hash", None)
        print(sha256_prefixed(jcs(record).encode("utf-8")))


if __name__ == "__main__":
    if sys.argv[1:] == ["rehash"]:
        rehash()
    else:
        main()
