"""A naive webhook receiver for scripts/bench: Starlette + uvicorn, SQLite WAL synchronous=FULL,
one commit per request. Usage: bench_peer.py DB_PATH PORT"""
import json, sqlite3, sys, uuid
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

db = sqlite3.connect(sys.argv[1], isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, payload BLOB NOT NULL)")

async def accept(request):
    body = await request.body()
    try: doc = json.loads(body)
    except ValueError: return JSONResponse({"error": "malformed_json"}, 400)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("position_uid", "first_name", "last_name")):
        return JSONResponse({"error": "validation_failed"}, 422)
    event_id = "evt_" + uuid.uuid4().hex
    with db:  # one transaction, one fsync'd commit per request
        db.execute("INSERT INTO events VALUES (?, ?, ?)", (event_id, request.headers.get("webhook-id") or None, body))
    return JSONResponse({"id": event_id, "state": "pending"}, 202)

app = Starlette(routes=[Route("/v1/candidates", accept, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
