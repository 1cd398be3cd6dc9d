"""Scenario 5: hostile input at the webhook.

Proves that nothing a sender can put on the wire gets a request stored that the contract
(CONTRACT.md section 4) says must be refused, takes the daemon down, or starves honest senders:

- At least 1,000 (short) / 10,000 (long) generated bad requests, random but seeded
  (`RELIABILITY_SEED`; the seed is printed): malformed, truncated and mutated JSON, wrong types,
  huge strings/arrays/numbers, deep nesting, invalid and overlong UTF-8, BOM and UTF-16/32
  bodies, duplicate keys, control characters, bad base64 and oversized files, broken, stale,
  replayed and oversized signatures, odd Content-Types, empty idempotency keys, request
  smuggling shapes over raw sockets, oversized headers and URIs, bodies cut mid-way, and 40
  slowloris senders held open while honest requests are timed.
- Oracle per request: the contract's JSON error with the right status where the class of input
  decides it (BOM -> 400 malformed_json, NUL in first_name -> 422 invalid_characters, bad
  signature -> 401, body above ingest.max_body_bytes -> 413, ...), a set of allowed answers
  where it does not, and a closed connection or an HTTP-layer 400 for framing attacks.
- Nothing refused is stored: rows counted around every request, and at the end the set of
  stored event ids equals the set of ids answered 202. A good signed request every ~50 bad ones
  must get 202. The daemon must never die (a crash is a failure; the scenario restarts it and
  goes on so one run reports every problem), and answers /healthz at the end.
- schemathesis (not_a_server_error, response_schema_conformance) against docs/openapi.yaml and
  a relay without inbound auth, plus openapi-spec-validator on the document.

Run alone: `RELIABILITY_SEED=42 python3 scripts/reliability/scenario_hostile.py [--long] [--seed N]`.
"""
import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import (BINARY, Relay, Results, Simulator, candidate, make_workdir, post, sign, signed_post,  # noqa: E402
                 wait_until)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPENAPI = os.path.join(REPO, "docs", "openapi.yaml")
MAX_BODY = 10_000_000          # ingest.max_body_bytes here: room for a 6 MB file (~8.4 MB base64)
FILE_LIMIT = 6 * 1024 * 1024   # the partner's per-file limit, decoded
PATH = "/v1/candidates"
GOOD_EVERY = 50

# --- answers a request may get ---------------------------------------------------------------
ACCEPT = "202"                 # 202, JSON {id, state: pending, partner_candidate_id}, Location
DUP = "200dup"                 # 200, {"duplicate": true}
HTTP = "http"                  # closed connection, or 400/431/414/505 from the HTTP layer (any body)
NOANSWER = "noanswer"          # anything, including no answer (we cut the request ourselves)
MALFORMED = (400, "malformed_json")
UNAUTH = (401, "unauthorized")
TOO_LARGE = (413, "payload_too_large")
MEDIA = (415, "unsupported_media_type")
INVALID = "422"                               # 422 validation_failed / invalid_characters, any details
REUSED = (409, "idempotency_key_reused")
NOT_FOUND = (404, "not_found")
UNKNOWN_ACCOUNT = (404, "unknown_account")
CONTRACT_STATUSES = {400, 401, 404, 409, 413, 415, 422, 503}


def v422(*pairs, exact=True):
    """422 validation_failed whose details hold exactly (or at least) these (field, problems)."""
    return ("422", tuple((f, frozenset([p]) if isinstance(p, str) else frozenset(p)) for f, p in pairs), exact)


class Outcome:
    def __init__(self, status=None, headers=None, body=b"", js=None, error=None, elapsed=0.0, extra=b""):
        self.status, self.headers, self.body, self.js = status, headers or {}, body, js
        self.error, self.elapsed, self.extra = error, elapsed, extra

    def short(self):
        if self.status is None:
            return f"no answer ({self.error})"
        code = self.js.get("error") if isinstance(self.js, dict) else None
        det = self.js.get("details") if isinstance(self.js, dict) else None
        text = f"{self.status}" + (f" {code}" if code else "")
        if det:
            text += f" details={det[:4]}" + ("..." if len(det) > 4 else "")
        elif self.js is None and self.body:
            text += f" body={self.body[:80]!r}"
        return text


def match(o, alt):
    """True when outcome `o` is the answer `alt`."""
    if alt == NOANSWER:
        return True
    if alt == HTTP:
        return o.status is None and o.error != "timeout" or o.status in (400, 414, 431, 505)
    js = o.js if isinstance(o.js, dict) else {}
    if alt == INVALID or isinstance(alt, tuple) and alt and alt[0] == "422":
        # The contract names both codes: `validation_failed`, and `invalid_characters` for control
        # characters. The relay answers the latter whenever one of the problems is a control character.
        details = [d for d in js.get("details") or [] if isinstance(d, dict)]
        has_ctl = any(d.get("problem") == "invalid_characters" for d in details)
        if not (o.status == 422 and js.get("error") == ("invalid_characters" if has_ctl else "validation_failed")):
            return False
        if alt == INVALID:
            return True
    if alt == ACCEPT:
        return (o.status == 202 and isinstance(js.get("id"), str) and js.get("state") == "pending"
                and isinstance(js.get("partner_candidate_id"), str)
                and o.headers.get("location") == f"/v1/candidates/{js.get('id')}")
    if alt == DUP:
        return o.status == 200 and js.get("duplicate") is True and isinstance(js.get("id"), str)
    if isinstance(alt, tuple) and alt and alt[0] == "422":
        got = {}
        for d in js.get("details") or []:
            if isinstance(d, dict):
                got.setdefault(d.get("field"), set()).add(d.get("problem"))
        want = dict(alt[1])
        if alt[2] and set(got) != set(want):
            return False
        return all(f in got and got[f] & probs for f, probs in want.items())
    if isinstance(alt, tuple):
        return o.status == alt[0] and js.get("error") == alt[1]
    return False


def shape_problem(o):
    """Contract errors are JSON {error, message, details: [...]}, Content-Type application/json."""
    if o.status in CONTRACT_STATUSES and isinstance(o.js, dict) and "error" in o.js:
        if not (isinstance(o.js.get("message"), str) and isinstance(o.js.get("details"), list)):
            return f"error body lacks message/details: {o.body[:200]!r}"
        if not o.headers.get("content-type", "").startswith("application/json"):
            return f"error Content-Type {o.headers.get('content-type')!r}"
        if o.status == 503 and "retry-after" not in o.headers:
            return "503 without Retry-After"
    return None


# --- sending -----------------------------------------------------------------------------------
def http_post(port, path, body, headers, timeout=15):
    t0 = time.monotonic()
    try:
        status, hdrs, js = post(port, path, body, headers, timeout=timeout)
    except socket.timeout:
        return Outcome(error="timeout", elapsed=time.monotonic() - t0)
    except Exception as e:  # closed, reset, refused: the daemon or the HTTP layer hung up
        return Outcome(error=type(e).__name__, elapsed=time.monotonic() - t0)
    hdrs = {k.lower(): v for k, v in dict(hdrs).items()}
    return Outcome(status, hdrs, b"", js, elapsed=time.monotonic() - t0)


def parse_response(buf):
    """(status, headers, body, rest) of the first HTTP response in buf, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ")[1])
    except (IndexError, ValueError):
        return (-1, {}, buf, b"")
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0") or 0)
    if len(buf) < end + 4 + n:
        return None
    return status, headers, buf[end + 4:end + 4 + n], buf[end + 4 + n:]


def raw_exchange(port, chunks, timeout=8.0, half_close=False, cut=False, linger=0.0):
    """Sends raw bytes (a list: sent one after another) and reads one response.

    cut: close right after sending (no answer expected). half_close: shut the write side and
    wait for the answer. linger: after a response, keep reading this long for a second one
    (a smuggled request answered)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as e:
        return Outcome(error=f"connect: {e.__class__.__name__}")
    buf = b""
    try:
        s.settimeout(timeout)
        sent_error = None
        for c in chunks:
            try:
                s.sendall(c)
            except OSError as e:  # the server may answer early (413) and close while we send
                sent_error = e.__class__.__name__
                break
        if cut:
            return Outcome(error="cut by client", elapsed=time.monotonic() - t0)
        if half_close and not sent_error:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        deadline = t0 + timeout
        parsed = None
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            except OSError as e:
                return Outcome(error=f"{e.__class__.__name__} after {len(buf)} bytes", elapsed=time.monotonic() - t0)
            if not data:
                break
            buf += data
            parsed = parse_response(buf)
            if parsed:
                break
        if not parsed:
            if buf:
                return Outcome(status=-1, body=buf, error="garbled", elapsed=time.monotonic() - t0)
            closed = time.monotonic() < deadline
            return Outcome(error="closed" if closed else "timeout", elapsed=time.monotonic() - t0)
        status, headers, body, rest = parsed
        if linger:
            s.settimeout(linger)
            try:
                while True:
                    more = s.recv(65536)
                    if not more:
                        break
                    rest += more
            except OSError:
                pass
        try:
            js = json.loads(body) if body else None
        except ValueError:
            js = None
        return Outcome(status, headers, body, js, elapsed=time.monotonic() - t0, extra=rest)
    finally:
        s.close()


def http_get(port, path, timeout=10):
    return raw_exchange(port, [f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()],
                        timeout=timeout)


# --- bodies ------------------------------------------------------------------------------------
def b64(data):
    return base64.b64encode(data).decode()


def full_candidate(i):
    """A candidate using every documented field, all valid (synthetic data only)."""
    c = candidate(i, position_uid="pos-hostile", partner_candidate_id=f"hostile-{i}")
    c.update({
        "first_name": f"Testfirst{i}", "middle_name": "Testmiddle", "last_name": f"Testlast{i}",
        "email": f"cand{i}@example.invalid", "phone": "+1 555 0100", "mobile_phone": "555-0101",
        "national_id": "TEST-0000", "linkedin_url": "https://www.linkedin.com/in/test-profile-0001",
        "salary_expectations": "100k / Annual", "prospect_status": "Sourced",
        "resume": {"name": "cv.pdf", "file": b64(b"%PDF-1.4 synthetic")},
        "picture": {"file": b64(b"\x89PNG synthetic"), "name": "picture.png"},
        "links": [{"url": "https://example.invalid/profile"}],
        "files": [{"name": "Coding challenge", "file": b64(b"synthetic file")}],
        "source_contact": {"full_name": "Test Sourcer", "email": "sourcer@example.invalid", "phone": "555 0102"},
        "address": {"country": "US", "city": "Testville", "state": "TS", "zip": "00000", "street": "1 Test St"},
        "custom_fields": {"field1": "value1", "score": 3, "remote": True},
        "note": "Synthetic note.\nLine two.\tTabbed.\r\n",
    })
    return c


def enc(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def path_name(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + p
    return out


def set_path(doc, path, value):
    d = doc
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


def get_path(doc, path):
    d = doc
    for p in path:
        d = d[p]
    return d


# (path, limit, required, format problem codes besides invalid_characters)
TEXT = [
    (("position_uid",), 255, True, ()), (("partner_candidate_id",), 255, False, ()),
    (("first_name",), 255, True, ()), (("middle_name",), 255, False, ()), (("last_name",), 255, True, ()),
    (("email",), 255, False, ("invalid_email",)), (("phone",), 255, False, ()),
    (("mobile_phone",), 255, False, ()), (("national_id",), 255, False, ()),
    (("linkedin_url",), 2048, False, ("invalid_linkedin_url",)), (("salary_expectations",), 255, False, ()),
    (("prospect_status",), 255, False, ("invalid_prospect_status",)),
    (("resume", "name"), 255, True, ("invalid_file_extension",)), (("picture", "name"), 255, True, ()),
    (("links", 0, "url"), 2048, True, ("invalid_url",)), (("files", 0, "name"), 255, True, ()),
    (("source_contact", "full_name"), 255, False, ()),
    (("source_contact", "email"), 255, True, ("invalid_email",)), (("source_contact", "phone"), 255, False, ()),
    (("address", "country"), 255, False, ("incorrect_country_code",)), (("address", "city"), 255, False, ()),
    (("address", "state"), 255, False, ()), (("address", "zip"), 255, False, ()),
    (("address", "street"), 255, False, ()), (("note",), 10000, False, ()),
]
PLAIN = [t for t in TEXT if not t[3]]
FILES = [("resume", "file"), ("picture", "file"), ("files", 0, "file")]
OBJECTS = ["resume", "picture", "source_contact", "address", "custom_fields"]
ARRAYS = ["links", "files"]
NOT_STRINGS = [0, -1, 1.5, True, False, [], ["x"], {}, {"a": "b"}]
NOT_OBJECTS = [0, 2.5, True, "x", "", [], [{}]]
NOT_ARRAYS = [0, True, "x", {}, {"url": "https://example.invalid/"}]

INVALID_UTF8 = [b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xb0\x80",
                b"\xed\xa0\xbd\xed\xb8\x80", b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
                b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xfe", b"\xff", b"\x80", b"\xbf",
                b"\xe2\x82", b"\xc3", b"\xf0\x9f\x98"]


class Dup(ValueError):
    pass


def python_view(body):
    """A strict reference reading of a body: 'malformed', 'reject' (lone surrogate, infinite
    number, too deep: must not be accepted, 400 or 422), 'nonobject' or 'object'."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "malformed"
    if text.startswith("\ufeff"):
        return "malformed"

    def pairs(ps):
        keys = [k for k, _ in ps]
        if len(keys) != len(set(keys)):
            raise Dup("duplicate key")
        return dict(ps)

    def const(_):
        raise ValueError("NaN/Infinity is not JSON")
    try:
        doc = json.loads(text, object_pairs_hook=pairs, parse_constant=const)
    except RecursionError:
        return "reject"
    except ValueError:
        return "malformed"
    bad = []

    def walk(v, depth):
        if depth > 64:
            bad.append("deep")
            return
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            bad.append("inf")
        elif isinstance(v, str) and any(0xD800 <= ord(ch) <= 0xDFFF for ch in v):
            bad.append("surrogate")
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k, depth + 1)
                walk(x, depth + 1)
        elif isinstance(v, list):
            for x in v:
                walk(x, depth + 1)
    try:
        walk(doc, 0)
    except RecursionError:
        bad.append("deep")
    if bad:
        return "reject"
    return "object" if isinstance(doc, dict) else "nonobject"


def control_in_text(body):
    """True when a text field of the (parseable) document holds a control character."""
    doc = json.loads(body)
    for path, _, _, _ in TEXT:
        try:
            v = get_path(doc, path)
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(v, str):
            allowed = "\t\r\n" if path == ("note",) else ""
            if any((ord(ch) < 0x20 or ord(ch) == 0x7F) and ch not in allowed for ch in v):
                return True
    return False


def mutate(body, rng):
    b = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        if not b:
            break
        op = rng.randrange(5)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            del b[i]
        elif op == 2:
            b[i:i] = rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\x00", b"\x7f", b"\xff",
                                 b"\xc0", b" ", b"null", b"1e400", b"\\u0000", b"\\ud800", b'"a":1,'])
        elif op == 3:
            j = rng.randrange(len(b))
            b[i], b[j] = b[j], b[i]
        else:
            j = min(len(b), i + rng.randint(1, 40))
            b[i:i] = b[i:j]
    out = bytes(b)
    return out if out != body else body + b"x"  # always a different body (a swap can undo itself)


# --- the plan ----------------------------------------------------------------------------------
class Case:
    """One hostile request: how to send it and which answers are right."""

    def __init__(self, cls, desc, expect, body=None, path=PATH, headers=None, sign_it=True, ct="application/json",
                 raw=None, cut=False, half_close=False, linger=0.0, msg_id=None, ts_offset=0, method="POST",
                 replay=None, timeout=15.0):
        self.cls, self.desc, self.expect = cls, desc, expect
        self.body, self.path, self.headers, self.sign_it, self.ct = body, path, headers or {}, sign_it, ct
        self.raw, self.cut, self.half_close, self.linger = raw, cut, half_close, linger
        self.msg_id, self.ts_offset, self.method, self.replay, self.timeout = msg_id, ts_offset, method, replay, timeout


class Counter:
    def __init__(self, start=0):
        self.n = start

    def next(self):
        self.n += 1
        return self.n


def build_plan(rng, n_bad, long):
    """Every hostile case, in a seeded random order (the fixed cases first, then random ones)."""
    ids = Counter(1000)
    fixed = []

    def C(*a, **k):
        fixed.append(Case(*a, **k))

    def valid():
        return full_candidate(ids.next())

    # encodings: what is not plain UTF-8 JSON is 400 malformed_json
    C("encoding", "UTF-8 BOM", [MALFORMED], body=b"\xef\xbb\xbf" + enc(valid()))
    for name, codec, bom in [("UTF-16LE", "utf-16-le", b""), ("UTF-16LE+BOM", "utf-16-le", b"\xff\xfe"),
                             ("UTF-16BE", "utf-16-be", b""), ("UTF-16BE+BOM", "utf-16-be", b"\xfe\xff"),
                             ("UTF-32LE", "utf-32-le", b""), ("UTF-32BE+BOM", "utf-32-be", b"\x00\x00\xfe\xff")]:
        C("encoding", name, [MALFORMED], body=bom + json.dumps(valid()).encode(codec))
    C("encoding", "BOM then whitespace", [MALFORMED], body=b"\xef\xbb\xbf \n" + enc(valid()))
    C("encoding", "BOM in the middle (between members)", [MALFORMED],
      body=enc(valid()).replace(b'{"', b'{\xef\xbb\xbf"', 1))
    # invalid UTF-8 inside a string, a key, and between tokens
    for seq in INVALID_UTF8:
        d = valid()
        C("invalid_utf8", f"{seq.hex()} in first_name", [MALFORMED],
          body=enc(d).replace(d["first_name"].encode(), d["first_name"].encode() + seq, 1))
    C("invalid_utf8", "C0 80 in a key", [MALFORMED], body=enc(valid()).replace(b'"note"', b'"no\xc0\x80te"', 1))
    C("invalid_utf8", "FF between tokens", [MALFORMED], body=enc(valid()).replace(b",", b",\xff", 1))
    C("invalid_utf8", "CESU-8 surrogate pair for U+1F600 in note", [MALFORMED],
      body=enc(valid()).replace(b'"note":"', b'"note":"\xed\xa0\xbd\xed\xb8\x80', 1))
    for esc in [r"\ud800", r"\udc00", r"\ud800\u0041", r"\udbff"]:
        C("invalid_utf8", f"lone surrogate escape {esc} in first_name", [MALFORMED, INVALID],
          body=enc(valid()).replace(b'"first_name":"', b'"first_name":"' + esc.encode(), 1))
    C("invalid_utf8", "valid surrogate pair escape in first_name (control)", [ACCEPT],
      body=enc(valid()).replace(b'"first_name":"', b'"first_name":"\\ud83d\\ude00', 1))
    C("invalid_utf8", "raw 4-byte UTF-8 in first_name (control)", [ACCEPT],
      body=enc(valid()).replace(b'"first_name":"', '"first_name":"\U0001F600é'.encode(), 1))

    # duplicate keys, at every depth, and spelled differently
    d = valid()
    C("duplicate_keys", "first_name twice, different values", [MALFORMED],
      body=enc(d)[:-1] + b',"first_name":"Otherfirst"}')
    C("duplicate_keys", "first_name twice, same value", [MALFORMED],
      body=enc(d)[:-1] + b',"first_name":' + json.dumps(d["first_name"]).encode() + b"}")
    C("duplicate_keys", "position_uid twice (first empty)", [MALFORMED],
      body=b'{"position_uid":"",' + enc(valid())[1:])
    C("duplicate_keys", "address.country twice", [MALFORMED],
      body=enc(valid()).replace(b'"country":"US"', b'"country":"US","country":"DE"', 1))
    C("duplicate_keys", "links[0].url twice", [MALFORMED],
      body=enc(valid()).replace(b'"links":[{"url":', b'"links":[{"url":"https://example.invalid/a","url":', 1))
    C("duplicate_keys", "custom_fields key twice", [MALFORMED],
      body=enc(valid()).replace(b'"field1":"value1"', b'"field1":"value1","field1":"value2"', 1))
    C("duplicate_keys", "unknown key twice", [MALFORMED], body=b'{"x_extra":1,"x_extra":2,' + enc(valid())[1:])
    C("duplicate_keys", r"first_name and first\u005fname", [MALFORMED],
      body=enc(valid())[:-1] + b',"first\\u005fname":"Otherfirst"}')
    C("duplicate_keys", "resume.name twice", [MALFORMED],
      body=enc(valid()).replace(b'"name":"cv.pdf"', b'"name":"cv.pdf","name":"cv.exe"', 1))

    # control characters: 422 invalid_characters, except tab/CR/LF in note; raw ones are not JSON
    for path, _, _, fmt in TEXT:
        for ch in ["\x00", "\x1b", "\x7f", "\t", "\r", "\n"]:
            d = valid()
            set_path(d, path, get_path(d, path)[:3] + ch + get_path(d, path)[3:])
            if path == ("note",) and ch in "\t\r\n":
                exp = [ACCEPT]
            else:
                exp = [v422((path_name(path), ("invalid_characters",) + fmt))]
            C("control_chars", f"U+{ord(ch):04X} (escaped) in {path_name(path)}", exp, body=enc(d))
    d = valid()
    C("control_chars", "raw NUL byte inside first_name (not JSON)", [MALFORMED],
      body=enc(d).replace(b'"first_name":"', b'"first_name":"\x00', 1))
    C("control_chars", "raw ESC byte inside note (not JSON)", [MALFORMED],
      body=enc(valid()).replace(b'"note":"', b'"note":"\x1b', 1))
    C("control_chars", "raw DEL byte inside last_name", [v422(("last_name", "invalid_characters"))],
      body=enc(valid()).replace(b'"last_name":"', b'"last_name":"\x7f', 1))
    d = valid()
    d["note"] = "\u0000" * 10
    C("control_chars", "note of NULs", [v422(("note", "invalid_characters"))], body=enc(d))

    # numbers
    for tok in ["1e400", "-1e400", "1E+400", "123456789012345678901234567890123456789012345678901234567890123e999"]:
        C("numbers", f"{tok[:20]} as first_name", [MALFORMED, v422(("first_name", "must_be_string"))],
          body=enc(valid()).replace(b'"first_name":"', b'"first_name":' + tok.encode() + b',"x_was":"', 1))
        C("numbers", f"{tok[:20]} in custom_fields", [MALFORMED, INVALID],
          body=enc(valid()).replace(b'"score":3', b'"score":' + tok.encode(), 1))
        C("numbers", f"{tok[:20]} as the whole body", [MALFORMED, v422(("$", "must_be_object"))], body=tok.encode())
    for tok in ["-0", "-0.0", "1e-400", "0.000000000000000000000000000000000000000000000001e-400",
                "1" * 64, "-" + "9" * 64, "1.0000000000000000000000000000000000000000000000000000001"]:
        C("numbers", f"{tok[:20]} as first_name", [MALFORMED, v422(("first_name", "must_be_string"))],
          body=enc(valid()).replace(b'"first_name":"', b'"first_name":' + tok.encode() + b',"x_was":"', 1))
        C("numbers", f"{tok[:20]} in custom_fields", [ACCEPT, MALFORMED, INVALID],
          body=enc(valid()).replace(b'"score":3', b'"score":' + tok.encode(), 1))
    for tok in ["01", "1.", ".5", "+1", "0x10", "NaN", "Infinity", "-Infinity", "1e", "--1"]:
        C("numbers", f"not a JSON number {tok} in custom_fields", [MALFORMED],
          body=enc(valid()).replace(b'"score":3', b'"score":' + tok.encode(), 1))

    # deep nesting
    n = 100_000
    C("deep_nesting", "100,000 x '['", [MALFORMED], body=b"[" * n)
    C("deep_nesting", "100,000 x '{\"a\":'", [MALFORMED], body=b'{"a":' * n)
    C("deep_nesting", "100,000 balanced [ ]", [MALFORMED, v422(("$", "must_be_object"))], body=b"[" * n + b"]" * n)
    C("deep_nesting", "100,000 balanced {\"a\": }", [MALFORMED, INVALID], body=b'{"a":' * n + b"1" + b"}" * n)
    C("deep_nesting", "100,000 balanced [ ] in custom_fields", [MALFORMED, INVALID],
      body=enc(valid()).replace(b'"score":3', b'"score":' + b"[" * n + b"]" * n, 1))
    C("deep_nesting", "100,000 x '[' in links", [MALFORMED],
      body=enc(valid()).replace(b'"links":[', b'"links":[' + b"[" * n, 1))
    C("deep_nesting", "1,000 balanced {\"a\": } in address", [MALFORMED, INVALID],
      body=enc(valid()).replace(b'"city":"Testville"', b'"city":' + b'{"a":' * 1000 + b"1" + b"}" * 1000, 1))

    # huge strings, arrays, keys; limits at their boundaries
    for path, limit, req, fmt in TEXT:
        for extra in (0, 1):
            d = valid()
            cur = get_path(d, path)
            if path[-1] in ("email",):
                value = "a" * (limit + extra - len("@example.invalid")) + "@example.invalid"
            elif path[-1] in ("linkedin_url", "url"):
                value = cur + "a" * (limit + extra - len(cur))
            elif path == ("resume", "name"):
                value = "c" * (limit + extra - 4) + ".pdf"
            elif path in [("prospect_status",), ("address", "country")]:
                if not extra:
                    continue
                value = "A" * (limit + 1)
            else:
                value = ("é" if limit == 255 else "a") * (limit + extra)
            set_path(d, path, value)
            exp = [v422((path_name(path), "string_size_limit"))] if extra else [ACCEPT]
            C("size_limits", f"{path_name(path)} of {limit + extra} scalars", exp, body=enc(d))
    d = valid()
    d["first_name"] = "\U0001F600" * 255
    C("size_limits", "first_name of 255 emoji (255 scalars, 510 UTF-16 units)", [ACCEPT], body=enc(d))
    d = valid()
    d["first_name"] = "e\u0301" * 128
    C("size_limits", "first_name of 128 e+combining accent (256 scalars)", [v422(("first_name", "string_size_limit"))],
      body=enc(d))
    d = valid()
    d["first_name"] = "a" * 9_000_000
    C("size_limits", "first_name of 9,000,000 chars", [v422(("first_name", "string_size_limit"))], body=enc(d))
    # Over 10,000 JSON values a document is one problem, `$ too_many_values`, at once; below,
    # each element is a problem (an answer lists the first 100).
    d = valid()
    d["links"] = [1] * 100_000
    C("size_limits", "links of 100,000 numbers", [v422(("$", "too_many_values"))], body=enc(d))
    d = valid()
    d["links"] = [1] * 5_000
    C("size_limits", "links of 5,000 numbers", [v422(("links[0]", "must_be_object"), ("links[99]", "must_be_object"),
                                                     exact=False)], body=enc(d))
    d = valid()
    d["files"] = [None] * 200_000
    C("size_limits", "files of 200,000 nulls", [v422(("$", "too_many_values"))], body=enc(d))
    C("size_limits", "array of 1,000,000 zeros as the body", [v422(("$", "must_be_object"))],
      body=b"[" + b"0," * 999_999 + b"0]")
    C("size_limits", "a 1 MB unknown key", [ACCEPT, INVALID], body=b'{"' + b"k" * 1_000_000 + b'":1,' + enc(valid())[1:])
    C("size_limits", "custom_fields with 50,000 keys", [ACCEPT, INVALID],
      body=enc(valid()).replace(b'"custom_fields":{', b'"custom_fields":{' + b"".join(
          b'"k%d":%d,' % (i, i) for i in range(50_000)), 1))
    C("size_limits", "empty body", [MALFORMED], body=b"")
    C("size_limits", "whitespace-only body", [MALFORMED], body=b" \r\n\t ")
    C("size_limits", "body 'null'", [v422(("$", "must_be_object"))], body=b"null")
    C("size_limits", "body '{}'", [v422(("position_uid", "required"), ("first_name", "required"),
                                         ("last_name", "required"))], body=b"{}")

    # files: base64 and the 6 MB decoded limit
    for bad in ["abc", "@@@@", "YQ==YQ==", "YQ===", "====", "YQ-_", "YWJj\x00", "é" * 4, "YW Jj=", "Y"]:
        exp_problem = ["invalid_base64"] + (["invalid_characters"] if "\x00" in bad else [])
        for path in FILES:
            d = valid()
            set_path(d, path, bad)
            C("base64", f"{path_name(path)} = {bad!r}", [v422((path_name(path), exp_problem))], body=enc(d))
    for path in FILES:
        d = valid()
        set_path(d, path, "")
        C("base64", f"{path_name(path)} empty", [v422((path_name(path), "required"))], body=enc(d))
    d = valid()
    d["resume"]["file"] = "YWJj\nZGVm\r\nZ2hp"
    C("base64", "resume.file with line breaks (control)", [ACCEPT], body=enc(d))
    big = b64(b"\x00" * (FILE_LIMIT + 1))
    for path in FILES:
        d = valid()
        set_path(d, path, big)
        C("base64", f"{path_name(path)} of 6 MB + 1 byte decoded", [v422((path_name(path), "file_size_limit"))],
          body=enc(d))
    d = valid()
    d["resume"]["file"] = b64(b"\x00" * FILE_LIMIT)
    C("base64", "resume.file of exactly 6 MB decoded (control)", [ACCEPT], body=enc(d))

    # body size: 413 before anything else
    d = valid()
    exact = enc(d)
    exact = exact[:1] + b" " * (MAX_BODY - len(exact)) + exact[1:]
    C("body_size", f"body of exactly max_body_bytes ({MAX_BODY}) (control)", [ACCEPT], body=exact, timeout=60)
    C("body_size", "body of max_body_bytes + 1", [TOO_LARGE], body=exact[:1] + b" " + exact[1:], timeout=60)
    C("body_size", "Content-Length above the limit, no body sent", [TOO_LARGE, HTTP], raw="cl_only_huge")
    C("body_size", "chunked body above the limit", [TOO_LARGE, HTTP], raw="chunked_huge", timeout=60)
    C("body_size", "unsigned body above the limit (413 before 401)", [TOO_LARGE], body=exact[:1] + b" " + exact[1:],
      sign_it=False, timeout=60)

    # check order: 413, 401, 415, 400, 422
    C("check_order", "unsigned + text/plain (401 before 415)", [UNAUTH], body=enc(valid()), sign_it=False, ct="text/plain")
    C("check_order", "signed + text/plain + broken JSON (415 before 400)", [MEDIA], body=b'{"a":', ct="text/plain")
    C("check_order", "signed + BOM + invalid fields (400 before 422)", [MALFORMED],
      body=b"\xef\xbb\xbf" + enc({"first_name": 1}))
    C("check_order", "signed + duplicate key + invalid fields (400 before 422)", [MALFORMED],
      body=b'{"first_name":1,"first_name":2}')
    C("check_order", "bad signature + BOM (401 before 400)", [UNAUTH], body=b"\xef\xbb\xbf{}",
      headers={"webhook-signature": "v1,AAAA"})

    # Content-Type
    for ct, exp in [(";", [MEDIA]), ("", [MEDIA]), (None, [MEDIA]), (" ", [MEDIA]), (";;", [MEDIA]),
                    ("; charset=utf-8", [MEDIA]), ("text/plain", [MEDIA]), ("text/json", [MEDIA]),
                    ("application/jsonx", [MEDIA]), ("application/x-www-form-urlencoded", [MEDIA]),
                    ("multipart/form-data; boundary=x", [MEDIA]), ("application/*", [MEDIA]), ("*/*", [MEDIA]),
                    ("json", [MEDIA]), ("application", [MEDIA]), ("application/", [MEDIA]),
                    ("APPLICATION/JSON", [ACCEPT]), ("application/json", [ACCEPT]),
                    ("application/json; charset=utf-8", [ACCEPT]), ("Application/Json;Charset=UTF-8", [ACCEPT]),
                    ("application/json;;;", [ACCEPT, MEDIA]), ("application/json ; charset=utf-8", [ACCEPT, MEDIA]),
                    ("application/vnd.test+json", [ACCEPT, MEDIA]),
                    ("application/json; charset=utf-16", [ACCEPT, MEDIA, MALFORMED]),
                    ("application/json; x=" + "a" * 10_000, [ACCEPT, MEDIA, HTTP]),
                    ("a" * 10_000, [MEDIA, HTTP])]:
        C("content_type", f"Content-Type {ct if ct is None else repr(ct[:40])}", exp, body=enc(valid()), ct=ct)
    C("content_type", "two Content-Type headers (json, text/plain)", [MEDIA, HTTP, MALFORMED, ACCEPT], raw="two_ct")

    # signatures
    C("signature", "no auth headers", [UNAUTH], body=enc(valid()), sign_it=False)
    C("signature", "Authorization: Bearer garbage", [UNAUTH], body=enc(valid()), sign_it=False,
      headers={"Authorization": "Bearer garbage"})
    C("signature", "signature of another body", [UNAUTH], body=enc(valid()), headers={"__sign_body": enc(valid())})
    C("signature", "signature with another secret", [UNAUTH], body=enc(valid()),
      headers={"__secret": "whsec_" + b64(b"not-the-secret-0123456789abcdef")})
    for sig in ["", "v1", "v1,", "v1,!!!!", "v1,====", "v2,__VALID__", "V1,__VALID__",
                "v1,__VALID__x", "v1," + "A" * 44, "v1a,__VALID__", "\u00e9v1,__VALID__"]:
        C("signature", f"webhook-signature {sig[:30]!r}", [UNAUTH], body=enc(valid()), headers={"webhook-signature": sig})
    C("signature", "garbage, then the valid signature (control)", [ACCEPT], body=enc(valid()),
      headers={"webhook-signature": "v1,garbage v2,xx " + "v1,AAAA " * 200 + "__VALID__"})
    C("signature", "60 kB garbage signature header", [UNAUTH, HTTP], body=enc(valid()),
      headers={"webhook-signature": "v1," + "A" * 60_000})
    C("signature", "valid signature after 60 kB of entries", [ACCEPT, HTTP], body=enc(valid()),
      headers={"webhook-signature": "v1,AAAA " * 7_500 + "__VALID__"})
    for off in [301, 400, -301, -3600, 86400 * 365, -2_000_000_000]:
        C("signature", f"timestamp {off:+d} s", [UNAUTH], body=enc(valid()), ts_offset=off)
    for off in [-290, 290]:
        C("signature", f"timestamp {off:+d} s (control)", [ACCEPT], body=enc(valid()), ts_offset=off)
    for ts in ["", "abc", "1e9", "12.5", " ", "99999999999999999999999", "-1", "0x10"]:
        C("signature", f"webhook-timestamp {ts!r}", [UNAUTH], body=enc(valid()), headers={"__ts": ts})
    C("signature", "missing webhook-id", [UNAUTH], body=enc(valid()), headers={"__drop": "webhook-id"})
    C("signature", "missing webhook-timestamp", [UNAUTH], body=enc(valid()), headers={"__drop": "webhook-timestamp"})
    # a key over 1,024 bytes is refused (422 string_size_limit), signed or not
    C("signature", "webhook-id of 60 kB", [INVALID, UNAUTH, HTTP], body=enc(valid()), msg_id="m" * 60_000)
    C("signature", "webhook-id of 1,024 bytes (control)", [ACCEPT], body=enc(valid()), msg_id="m" * 1_024)
    # an empty webhook-id is no key: two different bodies must not share it
    C("signature", "empty webhook-id, signed (1 of 2)", [ACCEPT, UNAUTH], body=enc(valid()), msg_id="")
    C("signature", "empty webhook-id, signed (2 of 2, other body)", [ACCEPT, UNAUTH], body=enc(valid()), msg_id="")

    # replays (resolved at run time against earlier good requests)
    for k in range(6):
        C("replay", f"same webhook-id, same body #{k}", [DUP], replay="same")
        C("replay", f"same webhook-id, other body #{k}", [REUSED], replay="other")
    C("replay", "same webhook-id, same body, bad signature", [UNAUTH], replay="same_badsig")
    C("replay", "same webhook-id, same body, other Idempotency-Key", [DUP], replay="same_otherkey")

    # other endpoints
    C("accounts", "POST to an unknown account", [UNKNOWN_ACCOUNT], path="/v1/accounts/no-such-account/candidates",
      body=enc(valid()))
    C("accounts", "POST to an invalid account id", [UNKNOWN_ACCOUNT], path="/v1/accounts/NO..SUCH/candidates",
      body=enc(valid()))
    C("accounts", "GET from an unknown account", [UNKNOWN_ACCOUNT], method="GET",
      path="/v1/accounts/no-such-account/candidates/evt_0")
    C("reads", "GET an unknown id", [NOT_FOUND], method="GET", path="/v1/candidates/evt_does_not_exist")
    C("reads", "GET an id with %00", [NOT_FOUND, HTTP], method="GET", path="/v1/candidates/evt_%00")
    C("reads", "GET an id of 10 kB", [NOT_FOUND, HTTP], method="GET", path="/v1/candidates/" + "e" * 10_000)

    # HTTP framing over raw sockets: a closed connection or a 400 from the HTTP layer
    for shape in ["cl_and_te", "te_and_cl", "two_cl", "cl_negative", "cl_huge", "cl_hex", "cl_plus", "cl_float",
                  "cl_list", "chunk_size_zz", "chunk_size_negative", "chunk_size_huge", "te_chunked_identity",
                  "te_xchunked", "te_space_colon", "header_no_colon", "header_nul", "header_obs_fold",
                  "request_line_junk", "http_2_line"]:
        exp = [HTTP, TOO_LARGE] if shape in ("cl_huge", "chunk_size_huge") else [HTTP]
        C("smuggling", shape, exp, raw=shape, linger=1.0)
    # absolute-form request target (RFC 9112 3.2.2): a server must accept it; the path decides
    C("framing", "absolute-form URI naming another host", [ACCEPT, HTTP], raw="absolute_uri_other_host")
    C("framing", "same Content-Length twice", [ACCEPT, HTTP], raw="same_cl_twice")
    C("framing", "pipelined: two signed requests on one connection", [ACCEPT], raw="pipelined", linger=1.0)
    C("oversized_headers", "one 64 kB header", [HTTP, ACCEPT], raw="header_64k")
    C("oversized_headers", "200 headers of 1 kB", [HTTP, ACCEPT], raw="headers_200x1k")
    C("oversized_headers", "one 1 MB header", [HTTP], raw="header_1m")
    C("oversized_headers", "100 kB URI (POST)", [HTTP, ACCEPT], raw="uri_100k")
    C("oversized_headers", "100 kB URI (GET)", [HTTP, NOT_FOUND, (404, None)], raw="uri_100k_get")
    # bodies cut mid-way
    for shape in ["cut_body", "cut_headers", "cut_chunked", "cut_after_request_line"]:
        C("cut", shape, [NOANSWER], raw=shape, cut=True)
    C("cut", "Content-Length larger than the body, then half-close", [HTTP, MALFORMED], raw="cut_body", half_close=True)
    C("cut", "chunked without the last chunk, then half-close", [HTTP, MALFORMED], raw="cut_chunked", half_close=True)

    # --- random cases up to n_bad ---
    rand = []
    classes = [("mutated_json", 20), ("truncated_json", 10), ("wrong_types", 16), ("control_chars", 12),
               ("invalid_utf8", 8), ("size_limits", 7), ("numbers", 5), ("signature", 9), ("content_type", 4),
               ("replay", 3), ("base64", 3), ("duplicate_keys", 3)]
    names = [c for c, _ in classes]
    weights = [w for _, w in classes]
    while len(fixed) + len(rand) < n_bad:
        cls = rng.choices(names, weights)[0]
        d = valid()
        if cls == "mutated_json":
            body = mutate(enc(d), rng)
            view = python_view(body)
            if view == "object" and control_in_text(body):
                view = "object with a control character in a text field"
            exp = {"object with a control character in a text field": [INVALID],"malformed": [MALFORMED], "reject": [MALFORMED, INVALID], "nonobject": [INVALID],
                   "object": [ACCEPT, INVALID]}[view]
            rand.append(Case(cls, f"mutated ({view}) {body[:60]!r}...", exp, body=body))
        elif cls == "truncated_json":
            body = enc(d)
            cut = rng.randrange(0, len(body))
            rand.append(Case(cls, f"first {cut} of {len(body)} bytes", [MALFORMED], body=body[:cut]))
        elif cls == "wrong_types":
            problems = {}
            tops = rng.sample(list(d.keys()), rng.randint(1, 3))
            for top in tops:
                choice = rng.random()
                if top in OBJECTS and choice < 0.5:
                    set_path(d, (top,), rng.choice(NOT_OBJECTS))
                    problems[top] = "must_be_object"
                elif top in ARRAYS and choice < 0.5:
                    set_path(d, (top,), rng.choice(NOT_ARRAYS))
                    problems[top] = "must_be_array"
                elif top in ARRAYS and choice < 0.7:
                    set_path(d, (top, 0), rng.choice([1, "x", None, [], True]))
                    problems[f"{top}[0]"] = "must_be_object"
                elif top == "custom_fields":
                    d["custom_fields"]["bad"] = rng.choice([None, [], {}, [1], {"a": 1}])
                    problems["custom_fields.bad"] = "invalid_custom_candidate_field"
                else:
                    paths = [t for t in TEXT if t[0][0] == top] + [((top,) + f[1:], 0, True, ()) for f in FILES
                                                                   if f[0] == top]
                    if not paths:
                        continue
                    path, _, req, _ = rng.choice(paths)
                    value = rng.choice(NOT_STRINGS + [None] * 2 + ([""] if req else []))
                    set_path(d, path, value)
                    if value is None or value == "":
                        if req:
                            problems[path_name(path)] = "required"
                    else:
                        problems[path_name(path)] = "must_be_string"
            exp = [v422(*problems.items())] if problems else [ACCEPT]
            rand.append(Case(cls, f"{problems or 'nulls only'}", exp, body=enc(d)))
        elif cls == "control_chars":
            path, _, _, fmt = rng.choice(TEXT)
            ch = chr(rng.choice(list(range(0x20)) + [0x7f]))
            cur = get_path(d, path)
            at = rng.randrange(len(cur) + 1)
            set_path(d, path, cur[:at] + ch + cur[at:])
            if path == ("note",) and ch in "\t\r\n":
                exp = [ACCEPT]
            else:
                exp = [v422((path_name(path), ("invalid_characters",) + fmt))]
            rand.append(Case(cls, f"U+{ord(ch):04X} at {at} in {path_name(path)}", exp, body=enc(d)))
        elif cls == "invalid_utf8":
            path, _, _, _ = rng.choice(PLAIN)
            seq = rng.choice(INVALID_UTF8)
            marker = "\u2603MARK\u2603"
            cur = get_path(d, path)
            set_path(d, path, cur[:1] + marker + cur[1:])
            body = enc(d).replace(marker.encode(), seq, 1)
            rand.append(Case(cls, f"{seq.hex()} in {path_name(path)}", [MALFORMED], body=body))
        elif cls == "size_limits":
            path, limit, _, fmt = rng.choice(PLAIN)
            extra = rng.choice([0, 1, 2, rng.randint(3, 5000)])
            set_path(d, path, rng.choice(["a", "é", "\u4e2d", "\U0001F600"]) * (limit + extra))
            exp = [ACCEPT] if extra == 0 else [v422((path_name(path), "string_size_limit"))]
            rand.append(Case(cls, f"{path_name(path)} of {limit + extra} scalars", exp, body=enc(d)))
        elif cls == "numbers":
            tok = rng.choice(["1e400", "-1e400", "1e-400", "-0", str(rng.randrange(10 ** 63, 10 ** 64)),
                              "9" * rng.randint(20, 400), f"{rng.random()}e{rng.randint(300, 100000)}"])
            path, _, _, _ = rng.choice(PLAIN)
            marker = "\u2603NUM\u2603"
            set_path(d, path, marker)
            body = enc(d).replace(json.dumps(marker, ensure_ascii=False).encode(), tok.encode(), 1)
            rand.append(Case(cls, f"{tok[:24]} as {path_name(path)}",
                             [MALFORMED, v422((path_name(path), "must_be_string"))], body=body))
        elif cls == "signature":
            kind = rng.randrange(4)
            if kind == 0:
                off = rng.choice([1, -1]) * rng.randint(301, 10 ** 7)
                rand.append(Case(cls, f"timestamp {off:+d} s", [UNAUTH], body=enc(d), ts_offset=off))
            elif kind == 1:
                rand.append(Case(cls, "one signature character changed", [UNAUTH], body=enc(d),
                                 headers={"__flip": rng.randrange(3, 45)}))
            elif kind == 2:
                rand.append(Case(cls, "body changed after signing", [UNAUTH], body=enc(d),
                                 headers={"__sign_body": mutate(enc(d), rng)}))
            else:
                junk = "".join(rng.choice("v1,=+/ abcXYZ0189\t") for _ in range(rng.randint(0, 300)))
                rand.append(Case(cls, f"garbage signature {junk[:30]!r}", [UNAUTH], body=enc(d),
                                 headers={"webhook-signature": junk}))
        elif cls == "content_type":
            ct = rng.choice(["text/plain", "", ";", "application/xml", "text/html; charset=utf-8",
                             "application/json-seq", "application/jsonp", "x" * rng.randint(1, 5000),
                             "multipart/mixed", "application/octet-stream"])
            rand.append(Case(cls, f"Content-Type {ct[:30]!r}", [MEDIA], body=enc(d), ct=ct))
        elif cls == "replay":
            kind = rng.choice(["same", "other"])
            rand.append(Case(cls, f"replay {kind}", [DUP] if kind == "same" else [REUSED], replay=kind))
        elif cls == "base64":
            path = rng.choice(FILES)
            raw = b64(bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))))
            at = rng.randrange(len(raw))
            bad = raw[:at] + rng.choice(["-", "_", "!", "*", "é", "=", "==="]) + raw[at:]
            set_path(d, path, bad)
            rand.append(Case(cls, f"{path_name(path)} = {bad[:30]!r}", [v422((path_name(path), "invalid_base64"))],
                             body=enc(d)))
        elif cls == "duplicate_keys":
            objs = [(), ("address",), ("resume",), ("source_contact",), ("custom_fields",), ("links", 0)]
            where = rng.choice(objs)
            obj = get_path(d, where) if where else d
            key = rng.choice(list(obj.keys()))
            body = enc(d)
            frag = json.dumps(key).encode() + b":"
            idx = body.find(frag, body.find(json.dumps(where[0]).encode()) if where else 0)
            dupval = json.dumps(rng.choice([obj[key], "Other", 1, None])).encode()
            body = body[:idx] + frag + dupval + b"," + body[idx:]
            rand.append(Case(cls, f"{path_name(where) or '$'}.{key} twice", [MALFORMED], body=body))
    rng.shuffle(fixed)
    plan = fixed + rand
    return plan


# --- raw HTTP shapes -----------------------------------------------------------------------
def raw_request(ctx, case):
    """The bytes of a raw-socket case (a list of chunks)."""
    relay = ctx.relay
    body = enc(full_candidate(ctx.ids.next()))
    h = sign(relay.secret, ctx.new_msg_id(), int(time.time()), body)
    sig = "".join(f"{k}: {v}\r\n" for k, v in h.items())
    host = f"Host: 127.0.0.1:{relay.port}\r\n"
    start = f"POST {PATH} HTTP/1.1\r\n{host}Content-Type: application/json\r\n{sig}"
    smug_body = enc(full_candidate(ctx.ids.next()))
    sh = sign(relay.secret, ctx.new_msg_id(), int(time.time()), smug_body)
    smuggled = (f"POST {PATH} HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in sh.items())
                + f"Content-Length: {len(smug_body)}\r\n\r\n").encode() + smug_body
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    s = case.raw
    if s == "cl_and_te":
        return [(start + f"Content-Length: {len(chunked)}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
                + chunked + smuggled]
    if s == "te_and_cl":
        return [(start + f"Transfer-Encoding: chunked\r\nContent-Length: {len(chunked) + len(smuggled)}\r\n\r\n").encode()
                + chunked + smuggled]
    if s == "same_cl_twice":
        return [(start + f"Content-Length: {len(body)}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "pipelined":
        return [(start + f"Content-Length: {len(body)}\r\n\r\n").encode() + body + smuggled]
    if s == "two_cl":
        return [(start + f"Content-Length: {len(body)}\r\nContent-Length: {len(body) + 5}\r\n\r\n").encode()
                + body + b"XXXXX" + smuggled]
    cl_values = {"cl_negative": "-1", "cl_huge": "99999999999999999999999999", "cl_hex": "0x10",
                 "cl_plus": f"+{len(body)}", "cl_float": f"{len(body)}.0", "cl_list": f"{len(body)}, {len(body) + 1}"}
    if s in cl_values:
        return [(start + f"Content-Length: {cl_values[s]}\r\n\r\n").encode() + body]
    if s == "chunk_size_zz":
        return [(start + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"zz\r\n" + body + b"\r\n0\r\n\r\n"]
    if s == "chunk_size_negative":
        return [(start + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"-5\r\n" + body + b"\r\n0\r\n\r\n"]
    if s == "chunk_size_huge":
        return [(start + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"ffffffffffffffffffffffff\r\n" + body]
    if s == "te_chunked_identity":
        return [(start + f"Transfer-Encoding: chunked, identity\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "te_xchunked":
        return [(start + f"Transfer-Encoding: xchunked\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "te_space_colon":
        return [(start + f"Transfer-Encoding : chunked\r\nContent-Length: {len(chunked)}\r\n\r\n").encode() + chunked
                + smuggled]
    if s == "header_no_colon":
        return [(start + f"X-Broken-Header\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "header_nul":
        return [(start + f"X-Nul: a\x00b\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "header_obs_fold":
        return [(start + f"Content-Length: {len(body)}\r\n Transfer-Encoding: chunked\r\n\r\n").encode() + body]
    if s == "request_line_junk":
        return [f"POST {PATH} HTTP/1.1 extra junk\r\n{host}Content-Length: {len(body)}\r\n\r\n".encode() + body]
    if s == "http_2_line":
        return [f"POST {PATH} HTTP/2.0\r\n{host}Content-Length: {len(body)}\r\n\r\n".encode() + body]
    if s == "absolute_uri_other_host":
        return [(start.replace(f"POST {PATH}", f"POST http://other.invalid{PATH}", 1)
                 + f"Content-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "header_64k":
        return [(start + "X-Pad: " + "a" * 65_536 + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "headers_200x1k":
        return [(start + "".join(f"X-Pad-{i}: {'b' * 1024}\r\n" for i in range(200))
                 + f"Content-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "header_1m":
        return [(start + "X-Pad: " + "c" * 1_048_576 + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "uri_100k":
        return [(start.replace(f"POST {PATH}", f"POST {PATH}?q={'u' * 102_400}", 1)
                 + f"Content-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "uri_100k_get":
        return [f"GET /{'g' * 102_400} HTTP/1.1\r\n{host}\r\n".encode()]
    if s == "two_ct":
        return [(start + f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body]
    if s == "cl_only_huge":
        return [(start + f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode()]
    if s == "chunked_huge":
        piece = b" " * 1_000_000
        chunks = [(start + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"1\r\n{\r\n"]
        chunks += [f"{len(piece):x}\r\n".encode() + piece + b"\r\n"] * (MAX_BODY // len(piece) + 1)
        chunks += [f"{len(body) - 1:x}\r\n".encode() + body[1:] + b"\r\n0\r\n\r\n"]
        return chunks
    if s == "cut_body":
        return [(start + f"Content-Length: {len(body) + 5000}\r\n\r\n").encode() + body[:len(body) // 2]]
    if s == "cut_headers":
        return [start.encode()[: len(start) // 2]]
    if s == "cut_chunked":
        return [(start + "Transfer-Encoding: chunked\r\n\r\n").encode() + f"{len(body) + 5000:x}\r\n".encode() + body]
    if s == "cut_after_request_line":
        return [f"POST {PATH} HTTP/1.1\r\n".encode()]
    raise ValueError(s)


# --- running -----------------------------------------------------------------------------------
class Ctx:
    def __init__(self, workdir, config, sim, seed):
        self.workdir, self.config, self.sim, self.seed = workdir, config, sim, seed
        self.relay = None
        self.accepted = {}          # event id -> case description
        self.good = []              # (msg_id, body, event id) of accepted signed requests
        self.crashes = []
        self.ids = Counter(10 ** 6)
        self.msg = Counter(0)
        self.db = None

    def new_msg_id(self):
        return f"msg_hostile_{self.seed}_{self.msg.next()}"

    def start_relay(self):
        """Starts the relay, or restarts the same one (same outbox, secret and log) after a crash."""
        if self.relay is None:
            self.relay = Relay(self.workdir, config=self.config, sim=self.sim)
        self.relay.start()
        if self.db is not None:
            self.db.close()
        self.db = None

    def rows(self):
        for _ in range(3):
            try:
                if self.db is None:
                    self.db = self.relay.db()
                return self.db.execute("SELECT count(*) FROM events").fetchone()[0]
            except Exception:
                self.db = None
                time.sleep(0.05)
        return None

    def alive(self):
        return self.relay.proc.poll() is None


def send(ctx, case):
    relay = ctx.relay
    if case.raw:
        return raw_exchange(relay.port, raw_request(ctx, case), timeout=case.timeout, cut=case.cut,
                            half_close=case.half_close, linger=case.linger)
    if case.method == "GET":
        return http_get(relay.port, case.path)
    body = case.body
    if case.replay:
        if not ctx.good:
            good_request(ctx, "seed for replays")
        msg_id, orig, _ = ctx.good[ctx.msg.next() % len(ctx.good)]
        body = orig if case.replay != "other" else enc(full_candidate(ctx.ids.next()))
        headers = sign(relay.secret, msg_id, int(time.time()), body)
        if case.replay == "same_badsig":
            headers["webhook-signature"] = "v1," + b64(b"\x00" * 32)
        if case.replay == "same_otherkey":
            headers["Idempotency-Key"] = "other-key-" + ctx.new_msg_id()
        headers["Content-Type"] = "application/json"
        o = http_post(relay.port, case.path, body, headers, timeout=case.timeout)
        o.replayed = [e for m, b, e in ctx.good if m == msg_id][0]
        return o
    extra = dict(case.headers)
    headers = {}
    if case.sign_it:
        msg_id = case.msg_id if case.msg_id is not None else ctx.new_msg_id()
        ts = int(time.time()) + case.ts_offset
        secret = extra.pop("__secret", relay.secret)
        headers = sign(secret, msg_id, ts, extra.pop("__sign_body", body))
        if "__ts" in extra:
            headers["webhook-timestamp"] = extra.pop("__ts")
        if "__drop" in extra:
            headers.pop(extra.pop("__drop"))
        if "__flip" in extra:
            i = extra.pop("__flip")
            s = headers["webhook-signature"]
            headers["webhook-signature"] = s[:i] + ("A" if s[i] != "A" else "B") + s[i + 1:]
        if "webhook-signature" in extra:
            headers["webhook-signature"] = extra.pop("webhook-signature").replace("__VALID__", headers["webhook-signature"])
    headers.update(extra)
    if case.ct is not None:
        headers["Content-Type"] = case.ct
    return http_post(relay.port, case.path, body, headers, timeout=case.timeout)


def good_request(ctx, why):
    """A known-good signed request: must get 202."""
    body = enc(full_candidate(ctx.ids.next()))
    msg_id = ctx.new_msg_id()
    t0 = time.monotonic()
    try:
        status, headers, js = signed_post(ctx.relay, body, msg_id=msg_id)
    except Exception as e:
        return Outcome(error=type(e).__name__, elapsed=time.monotonic() - t0)
    o = Outcome(status, {k.lower(): v for k, v in dict(headers).items()}, b"", js, elapsed=time.monotonic() - t0)
    if match(o, ACCEPT):
        ctx.accepted[js["id"]] = f"good request ({why})"
        ctx.good.append((msg_id, body, js["id"]))
    return o


def restart_after_crash(ctx, where):
    code = ctx.relay.proc.poll()
    tail = [line[:300] for line in ctx.relay.raw_lines[-3:] + ctx.relay.stderr_lines[-8:]]
    ctx.crashes.append({"after": where, "exit": code, "log_tail": tail})
    print(f"  !! relay died or stopped answering (exit {code}) after {where}; restarting", flush=True)
    if ctx.relay.running():  # alive but not answering /healthz: a failure all the same
        ctx.relay.kill()
    ctx.start_relay()


def run_plan(results, ctx, plan):
    stats = {}
    good_fail = []
    goods = 0
    stored_by_rejected = []
    for i, case in enumerate(plan):
        if i % GOOD_EVERY == 0:
            o = good_request(ctx, f"before case {i}")
            goods += 1
            if not match(o, ACCEPT):
                good_fail.append(f"before case {i}: {o.short()}")
            if not ctx.alive():
                restart_after_crash(ctx, f"good request before case {i}")
        before = ctx.rows()
        o = send(ctx, case)
        died = not ctx.alive()
        if not died and (case.raw or o.status is None):
            # a framing attack or a dropped connection: make sure the daemon is still whole
            h = http_get(ctx.relay.port, "/healthz", timeout=5)
            died = not ctx.alive() or h.status != 200
        st = stats.setdefault(case.cls, {"n": 0, "fail": [], "answers": {}})
        st["n"] += 1
        key = o.short().split(" details=")[0][:40]
        st["answers"][key] = st["answers"].get(key, 0) + 1
        why = None
        if died:
            why = f"daemon died: {o.short()}"
        elif not any(match(o, alt) for alt in case.expect):
            why = f"got {o.short()}; want one of {[a if not isinstance(a, tuple) or a[0] != '422' else ('422', a[1]) for a in case.expect]}"
        else:
            why = shape_problem(o)
            if why is None and HTTP in case.expect and o.extra and b"HTTP/1." in o.extra:
                why = f"a second (smuggled) request was answered: {o.extra[:120]!r}"
            if why is None and case.replay in ("same", "same_otherkey") and o.js.get("id") != getattr(o, "replayed", None):
                why = f"duplicate answered with id {o.js.get('id')}, first event was {getattr(o, 'replayed', None)}"
        if o.status == 202 and isinstance(o.js, dict) and "id" in o.js:
            ctx.accepted[o.js["id"]] = f"{case.cls}: {case.desc}"
        second_stored = 0
        if case.raw == "pipelined" and not died:
            second = parse_response(o.extra or b"")
            js2 = None
            if second and second[0] == 202:
                try:
                    js2 = json.loads(second[2])
                except ValueError:
                    js2 = None
            if isinstance(js2, dict) and isinstance(js2.get("id"), str):
                ctx.accepted[js2["id"]] = f"{case.cls}: {case.desc} (second)"
                second_stored = 1
            elif why is None:
                why = f"the second pipelined request got {second[0] if second else 'no answer'}"
        if died:
            restart_after_crash(ctx, f"{case.cls}: {case.desc}")
        else:
            after = ctx.rows()
            grew = (after - before) if (after is not None and before is not None) else None
            want = (1 if o.status == 202 else 0) + second_stored
            if grew is not None and grew != want and not case.cut:
                stored_by_rejected.append(f"{case.cls}: {case.desc} -> {o.short()}, rows +{grew}")
        if why:
            st["fail"].append(f"{case.desc[:100]}: {why}")
    return stats, goods, good_fail, stored_by_rejected


def slowloris(results, ctx, hold_seconds, n_slow=40):
    """n_slow connections dripping one byte a second, never finishing; honest requests timed."""
    port = ctx.relay.port
    socks = []
    for i in range(n_slow):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2 == 0:  # never finishes its headers
            s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
        else:           # headers done, body promised and never delivered
            s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Content-Length: 100000\r\n\r\n{{".encode())
        socks.append(s)
    stop = threading.Event()
    closed_by_server = set()

    def drip():
        while not stop.wait(1.0):  # the cadence of the attack, not a wait for a condition
            for j, s in enumerate(socks):
                if j in closed_by_server:
                    continue
                try:
                    s.sendall(b"a")
                except OSError:
                    closed_by_server.add(j)
    t = threading.Thread(target=drip, daemon=True)
    t.start()
    slow, failed, n = [], [], 0
    deadline = time.monotonic() + hold_seconds
    pace = threading.Event()
    try:
        while time.monotonic() < deadline:
            o = good_request(ctx, "during slowloris")
            n += 1
            if not match(o, ACCEPT):
                failed.append(o.short())
            elif o.elapsed > 2.0:
                slow.append(round(o.elapsed, 2))
            h = http_get(port, "/healthz", timeout=5)
            if h.status != 200 or h.elapsed > 2.0:
                failed.append(f"/healthz: {h.short()} in {h.elapsed:.2f}s")
            pace.wait(0.2)  # pacing of honest traffic
            if not ctx.alive():
                break
    finally:
        stop.set()
        t.join(5)
        for s in socks:
            s.close()
    alive = ctx.alive()
    results.check(f"hostile: {n} good requests answered 202 within 2 s while {n_slow} slowloris senders were held "
                  f"open for {hold_seconds} s",
                  alive and n > 0 and not slow and not failed,
                  f"alive={alive}; slower than 2 s: {slow[:10]}; failed: {failed[:5]}; "
                  f"slow connections closed by the server: {len(closed_by_server)}")
    print(f"  slowloris: server closed {len(closed_by_server)} of {n_slow} slow connections during the hold", flush=True)
    if not alive:
        restart_after_crash(ctx, "slowloris")


def venv_tools():
    """The cache venv with schemathesis and openapi-spec-validator; None if PyPI is unreachable."""
    venv = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "candidate-relay", "venv")
    st = os.path.join(venv, "bin", "schemathesis")
    validator = os.path.join(venv, "bin", "openapi-spec-validator")
    if not (os.path.exists(st) and os.path.exists(validator)):
        try:
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
            subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "schemathesis", "openapi-spec-validator"],
                           check=True, capture_output=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            out = getattr(e, "stderr", b"") or b""
            return f"could not install schemathesis from PyPI: {out[-300:]!r}"
    return st, validator


def unauthenticated_checks(results, sim, workdir, seed, long):
    """A relay without inbound auth: empty idempotency keys, then schemathesis."""
    tools = venv_tools()
    cfg = {"ingest": {"allow_unauthenticated": True, "signing_secrets_file": None, "max_body_bytes": MAX_BODY}}
    relay = Relay(workdir, config=cfg, sim=sim).start()
    try:
        # an empty key is no key: two different candidates must both be accepted
        port = relay.port
        for header in ("Idempotency-Key", "webhook-id"):
            answers = []
            for k in range(2):
                body = enc(full_candidate(900_000 + k + (10 if header == "webhook-id" else 0)))
                answers.append(http_post(port, PATH, body, {"Content-Type": "application/json", header: ""}))
            ok = all(match(a, ACCEPT) for a in answers) and answers[0].js["id"] != answers[1].js["id"]
            results.check(f"hostile: two different candidates with an empty {header} both get 202 (no shared key)", ok,
                          "; ".join(a.short() for a in answers))
        body = enc(full_candidate(900_100))
        k = f"key-{seed}"
        a = http_post(port, PATH, body, {"Content-Type": "application/json", "Idempotency-Key": k})
        b = http_post(port, PATH, body, {"Content-Type": "application/json", "Idempotency-Key": k})
        c = http_post(port, PATH, enc(full_candidate(900_101)), {"Content-Type": "application/json", "Idempotency-Key": k})
        results.check("hostile: Idempotency-Key replay: same body 200 duplicate (same id), other body 409",
                      match(a, ACCEPT) and match(b, DUP) and b.js.get("id") == a.js.get("id") and match(c, REUSED),
                      f"{a.short()} / {b.short()} / {c.short()}")
        if isinstance(tools, str):
            results.skip("hostile: schemathesis and openapi-spec-validator", tools)
            return
        st, validator = tools
        v = subprocess.run([validator, OPENAPI], capture_output=True, text=True, timeout=120)
        results.check("hostile: docs/openapi.yaml validates (openapi-spec-validator)", v.returncode == 0,
                      (v.stdout + v.stderr)[-1500:])
        # The exact command (port and seed vary):
        #   schemathesis --no-color run docs/openapi.yaml --url http://127.0.0.1:PORT \
        #     --checks not_a_server_error,response_schema_conformance --max-examples 50 --seed SEED \
        #     --workers 1 --request-timeout 10 --suppress-health-check all --phases examples,coverage,fuzzing
        #   (--max-examples 300 with --long)
        cmd = [st, "--no-color", "run", OPENAPI, "--url", relay.url,
               "--checks", "not_a_server_error,response_schema_conformance",
               "--max-examples", "300" if long else "50", "--seed", str(seed), "--workers", "1",
               "--request-timeout", "10", "--suppress-health-check", "all",
               "--phases", "examples,coverage,fuzzing"]
        print("  $ " + " ".join(cmd), flush=True)
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600 if long else 900, cwd=workdir,
                               env=dict(os.environ, NO_COLOR="1"))
            out, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), -1
        log = os.path.join(workdir, "schemathesis.log")
        with open(log, "w") as f:
            f.write(out)
        lines = [line.rstrip() for line in out.splitlines() if line.strip()]
        first = next((i for i, line in enumerate(lines) if "FAILURES" in line), None)
        last = next((i for i, line in enumerate(lines) if "SUMMARY" in line), len(lines))
        failures = [line for line in lines[first + 1:last] if not line.strip().startswith(("curl ", "st replay"))] \
            if first is not None else lines[-30:]
        cases = next((line.strip() for line in lines if "generated," in line), "")
        print(f"  schemathesis: exit {rc} in {time.monotonic() - t0:.0f}s; {cases}", flush=True)
        results.check("hostile: schemathesis (not_a_server_error, response_schema_conformance) against docs/openapi.yaml",
                      rc == 0, "\n".join(failures[:80]))
        alive = relay.proc.poll() is None
        h = http_get(relay.port, "/healthz") if alive else Outcome(error="dead")
        results.check("hostile: relay without auth alive and /healthz 200 after schemathesis",
                      alive and h.status == 200, f"alive={alive}; {h.short()}; log tail: {relay.raw_lines[-3:]}")
    finally:
        relay.stop()


def run(results, long: bool) -> dict:
    seed = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(1, 2 ** 31))
    n_bad = 10_000 if long else 1_000
    print(f"scenario hostile: seed {seed} (reproduce with RELIABILITY_SEED={seed}); {n_bad} bad requests; "
          f"binary {BINARY}", flush=True)
    t_start = time.monotonic()
    rng = random.Random(seed)
    plan = build_plan(rng, n_bad, long)
    sim = Simulator().start()
    cfg = {"ingest": {"max_body_bytes": MAX_BODY}}
    ctx = Ctx(make_workdir("hostile-signed"), cfg, sim, seed)
    try:
        ctx.start_relay()
        rows_before = ctx.rows()
        t0 = time.monotonic()
        stats, goods, good_fail, stored_by_rejected = run_plan(results, ctx, plan)
        t_plan = time.monotonic() - t0
        slowloris(results, ctx, hold_seconds=60 if long else 12)

        total = 0
        for cls in sorted(stats):
            st = stats[cls]
            total += st["n"]
            answers = ", ".join(f"{k} x{v}" for k, v in sorted(st["answers"].items(), key=lambda kv: -kv[1])[:6])
            print(f"  {cls}: {st['n']} requests; answers: {answers}", flush=True)
            results.check(f"hostile/{cls}: {st['n']} requests answered per contract", not st["fail"],
                          f"{len(st['fail'])} wrong: " + " | ".join(st["fail"][:6]) + f"  [answers: {answers}]")
        print(f"  {total} bad requests in {t_plan:.1f}s", flush=True)
        results.check(f"hostile: a known-good signed request every {GOOD_EVERY} bad ones got 202 ({goods} sent)",
                      not good_fail, "; ".join(good_fail[:8]))
        results.check("hostile: the daemon never died", not ctx.crashes,
                      f"{len(ctx.crashes)} crash(es): " + json.dumps(ctx.crashes[:6])[:3000])

        # nothing refused is stored: the stored ids are exactly the ids answered 202
        stored = set()
        try:
            stored = {r["id"] for r in ctx.relay.query("SELECT id FROM events")}
        except Exception as e:
            stored_by_rejected.append(f"could not read events: {e}")
        extra, missing = stored - set(ctx.accepted), set(ctx.accepted) - stored
        results.check(f"hostile: nothing refused was stored (rows before {rows_before}, after {len(stored)}, "
                      f"202 answers {len(ctx.accepted)})",
                      rows_before == 0 and not extra and not missing and not stored_by_rejected,
                      f"stored without a 202: {sorted(extra)[:5]}; 202 but not stored: "
                      f"{[(i, ctx.accepted[i]) for i in sorted(missing)[:5]]}; row count changed on refusal: "
                      f"{stored_by_rejected[:6]}")

        # the relay still delivers: every good request ends delivered or linked
        good_ids = [e for _, _, e in ctx.good]

        def good_states():
            rows = ctx.relay.all_events()
            states = {}
            for i in good_ids:
                st = rows[i]["state"] if i in rows else "missing"
                states[st] = states.get(st, 0) + 1
            return states

        done = wait_until(lambda: set(good_states()) <= {"delivered", "linked"}, 120 if long else 60, 0.5)
        results.check(f"hostile: all {len(good_ids)} good events delivered to the partner", bool(done),
                      f"states: {good_states()}")

        alive = ctx.alive()
        h = http_get(ctx.relay.port, "/healthz") if alive else Outcome(error="dead")
        results.check("hostile: daemon alive and /healthz 200 at the end", alive and h.status == 200, h.short())
        ctx.relay.stop()

        unauthenticated_checks(results, sim, make_workdir("hostile-unauthenticated"), seed, long)
    finally:
        try:
            if ctx.relay:
                ctx.relay.stop()
        finally:
            sim.stop()
    elapsed = time.monotonic() - t_start
    print(f"scenario hostile: done in {elapsed:.0f}s (seed {seed}); work dir {ctx.workdir}", flush=True)
    return {"seed": seed, "bad_requests": len(plan), "seconds": round(elapsed, 1), "crashes": len(ctx.crashes)}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args()
    if a.seed is not None:
        os.environ["RELIABILITY_SEED"] = str(a.seed)
    r = Results()
    print(run(r, a.long))
    sys.exit(r.summary())
