"""Drives otpgate's Twilio Verify endpoints with Twilio's official Python SDK (tests/twilio.rs).

Usage: twilio_driver.py BASE_URL ACCOUNT_SID AUTH_TOKEN SERVICE_SID
Reads one JSON command per line on stdin ({"op": "create"|"fetch"|"update"|"check", ...}) and
answers each with one JSON line: the resource's fields as the SDK parsed them, or the SDK's
exception ({"error": {"status", "code", "message"}}).
"""

import json
import sys

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

base_url, account_sid, auth_token, service_sid = sys.argv[1:5]
client = Client(account_sid, auth_token)
# The documented way to point the SDK's Verify domain elsewhere (edge and region stay unset).
client.verify.base_url = base_url
service = client.verify.v2.services(service_sid)

FIELDS = ["sid", "service_sid", "account_sid", "to", "channel", "status", "valid", "send_code_attempts", "date_created", "date_updated"]


def shown(resource):
    out = {}
    for field in FIELDS:
        value = getattr(resource, field, None)
        out[field] = value.isoformat() if hasattr(value, "isoformat") else value
    return out


def run(command):
    op, params = command["op"], command.get("params", {})
    if op == "create":
        return service.verifications.create(**params)
    if op == "fetch":
        return service.verifications(command["sid"]).fetch()
    if op == "update":
        return service.verifications(command["sid"]).update(**params)
    if op == "check":
        return service.verification_checks.create(**params)
    raise ValueError(f"unknown op {op}")


for line in sys.stdin:
    try:
        answer = shown(run(json.loads(line)))
    except TwilioRestException as e:
        answer = {"error": {"status": e.status, "code": e.code, "message": e.msg}}
    print(json.dumps(answer), flush=True)
