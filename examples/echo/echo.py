"""Echo: a Cartesi rollups app in Python, with the standard library only.

It talks to the Rollup HTTP API at $ROLLUP_HTTP_SERVER_URL (in the machine:
http://127.0.0.1:5004). It loops on POST /finish, which reports how the last request
ended ("accept" or "reject") and answers with the next one (HTTP 202: none yet, ask again).

What it does with a request depends on the payload:

- an advance whose payload starts with the text "reject": nothing, and finishes with reject;
- an advance whose payload starts with the text "exception": POST /exception with the
  payload (the last call an app ever makes: if it returns, the app exits with status 1);
- any other advance: echoes the payload as a notice, a voucher (to the address
  0x0000000000000000000000000000000000000001, value 0) and a report, and accepts;
- an inspect: echoes the payload as a report, and accepts.

It logs one line per request on stderr.
"""

import json
import sys
import urllib.request
from os import environ

rollup_server = environ.get("ROLLUP_HTTP_SERVER_URL", "http://127.0.0.1:5004")

VOUCHER_DESTINATION = "0x" + "00" * 19 + "01"
VOUCHER_VALUE = "0x" + "00" * 32


def log(message):
    print(f"echo: {message}", file=sys.stderr, flush=True)


def post(route, body):
    """POST ``body`` as JSON to the rollup server; return the HTTP status and the answer
    (decoded JSON, or None when the answer is empty)."""
    request = urllib.request.Request(
        rollup_server + route, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        data = response.read()
        return response.status, json.loads(data) if data.strip() else None


def payload_bytes(payload):
    """The bytes of a "0x..." hex payload."""
    return bytes.fromhex(payload.removeprefix("0x"))


def handle_advance(data):
    payload = data["payload"]
    raw = payload_bytes(payload)
    index = data.get("metadata", {}).get("input_index", "?")
    if raw.startswith(b"reject"):
        log(f"advance {index}: {len(raw)} bytes: reject")
        return "reject"
    if raw.startswith(b"exception"):
        log(f"advance {index}: {len(raw)} bytes: exception")
        post("/exception", {"payload": payload})
        log("the rollup server returned from /exception: stopping")
        sys.exit(1)
    post("/notice", {"payload": payload})
    post("/voucher", {"destination": VOUCHER_DESTINATION, "value": VOUCHER_VALUE,
                      "payload": payload})
    post("/report", {"payload": payload})
    log(f"advance {index}: {len(raw)} bytes: notice, voucher, report, accept")
    return "accept"


def handle_inspect(data):
    payload = data["payload"]
    post("/report", {"payload": payload})
    log(f"inspect: {len(payload_bytes(payload))} bytes: report, accept")
    return "accept"


handlers = {
    "advance_state": handle_advance,
    "inspect_state": handle_inspect,
}


def main():
    log(f"rollup server at {rollup_server}")
    finish = {"status": "accept"}
    while True:
        status, rollup_request = post("/finish", finish)
        if status == 202:
            continue  # no pending request: ask again
        handler = handlers[rollup_request["request_type"]]
        finish["status"] = handler(rollup_request["data"])


if __name__ == "__main__":
    main()
