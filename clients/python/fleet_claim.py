#!/usr/bin/env python3
"""Claim a fleet node over NATS, run a command on it, release it.

A client written from PROTOCOL.md alone (no fleet code): it speaks the
claim plane on NATS subjects, verifies the grant's sealed credentials
against the daemon key it trusts *before* decrypting them with age,
connects to the node's mTLS gateway and runs a command through the exec
API, then releases the claim.

    python3 fleet_claim.py --nats nats://127.0.0.1:4222 --signer-file seal.ed25519.pub \
        --workspace ci --pool default -- uname -a

Needs: nats-py, pyrage, cryptography (see .ci/requirements.txt). Exit code:
the command's, or 2 for a usage error and 3 when the claim plane or the
node refused or failed.
"""

import argparse
import asyncio
import base64
import json
import os
import secrets
import ssl
import struct
import sys
import tempfile

import nats
import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PROTOCOL_VERSION = 1
CREDENTIALS_FORMAT = "fleet-credentials-v1"
MAX_EXEC_FRAME = 1 << 20


class FleetError(Exception):
    """The claim plane, the credentials or the node said no."""


def envelope(msg):
    """A message in the versioned envelope, compact JSON bytes."""
    return json.dumps({"v": PROTOCOL_VERSION, "msg": msg}, separators=(",", ":")).encode()


def open_envelope(data):
    """The `msg` of an envelope; refuses another protocol version."""
    doc = json.loads(data)
    if doc.get("v") != PROTOCOL_VERSION:
        raise FleetError(f"peer speaks protocol v{doc.get('v')}, this client v1")
    return doc["msg"]


def subject(namespace, verb, workspace, claim_id):
    return f"{namespace}.claim.{verb}.{workspace}.{claim_id}"


def server_name(node):
    """The node's TLS server name: its id lowercased, `_` as `-`."""
    return node.lower().replace("_", "-") + ".node.fleet"


def open_credentials(sealed, claim_id, recipient, identity, trusted_signer):
    """Verify the seal, then decrypt: the bundle's plaintext as a dict."""
    if sealed.get("format") != CREDENTIALS_FORMAT:
        raise FleetError(f"credentials format {sealed.get('format')!r}")
    if sealed["signer"].strip() != trusted_signer:
        raise FleetError("credentials sealed by an untrusted signer")
    payload = (
        f"{CREDENTIALS_FORMAT}\n{claim_id}\n{recipient}\n"
        f"{sealed['expires_at']}\n{sealed['ciphertext']}\n"
    ).encode()
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted_signer))
    try:
        key.verify(base64.b64decode(sealed["signature"]), payload)
    except InvalidSignature:
        raise FleetError("credentials signature does not verify") from None
    bundle = json.loads(pyrage.decrypt(sealed["ciphertext"].encode(), [identity]))
    if bundle["claim_id"] != claim_id or bundle["expires_at"] != sealed["expires_at"]:
        raise FleetError("credentials are for another claim or lease")
    return bundle


async def claim(nc, args, claim_id, recipient, timeout):
    """Sends the request and waits for this claim's grant."""
    ns, ws = args.namespace, args.workspace
    granted = asyncio.get_running_loop().create_future()

    async def on_grant_or_revoke(msg):
        reply = open_envelope(msg.data)
        if reply.get("claim_id") != claim_id or granted.done():
            return
        if reply["type"] == "granted":
            granted.set_result(reply)
        elif reply["type"] == "revoked":
            granted.set_exception(FleetError(f"revoked: {reply['reason']}"))

    # Subscribe before sending: a grant made later is published, not replied.
    subs = [
        await nc.subscribe(f"{ns}.claim.granted.{ws}.*", cb=on_grant_or_revoke),
        await nc.subscribe(f"{ns}.claim.revoked.{ws}.*", cb=on_grant_or_revoke),
    ]
    request = {
        "type": "request",
        "claim_id": claim_id,
        "workspace": ws,
        "pool": args.pool,
        "lease_ttl_ms": args.lease_ms,
        "recipient": recipient,
    }
    try:
        msg = await nc.request(
            subject(ns, "request", ws, claim_id), envelope(request), timeout=timeout
        )
        reply = open_envelope(msg.data)
        if reply["type"] == "granted":
            return reply
        if reply["type"] != "pending":
            raise FleetError(f"claim answered {reply['type']}: {reply}")
        print(f"pending: {reply['reason']['kind']}", file=sys.stderr)
        return await asyncio.wait_for(granted, timeout)
    finally:
        for s in subs:
            await s.unsubscribe()


async def release(nc, args, claim_id, timeout):
    body = {"type": "release", "workspace": args.workspace, "claim_id": claim_id}
    msg = await nc.request(
        subject(args.namespace, "release", args.workspace, claim_id),
        envelope(body),
        timeout=timeout,
    )
    reply = open_envelope(msg.data)
    if reply["type"] != "released":
        raise FleetError(f"release answered {reply['type']}: {reply}")


async def read_frame(reader):
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if length > MAX_EXEC_FRAME:
        raise FleetError(f"exec frame of {length} bytes")
    return json.loads(await reader.readexactly(length))


def write_frame(writer, frame):
    body = json.dumps(frame, separators=(",", ":")).encode()
    writer.write(struct.pack(">I", len(body)) + body)


async def run_on_node(bundle, argv, timeout):
    """Runs argv through the gateway's exec API; returns the exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in ("ca_pem", "cert_pem", "key_pem"):
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], "w", opener=lambda p, f: os.open(p, f, 0o600)) as f:
                f.write(bundle[name])
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=paths["ca_pem"])
        ctx.load_cert_chain(paths["cert_pem"], paths["key_pem"])
        host, port = bundle["endpoint"].rsplit(":", 1)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, int(port), ssl=ctx, server_hostname=server_name(bundle["node"])
            ),
            timeout,
        )
    try:
        write_frame(writer, {"type": "exec", "argv": argv})
        await writer.drain()
        while True:
            frame = await asyncio.wait_for(read_frame(reader), timeout)
            kind = frame["type"]
            if kind in ("stdout", "stderr"):
                out = sys.stdout if kind == "stdout" else sys.stderr
                out.buffer.write(base64.b64decode(frame["data"]))
                out.flush()
            elif kind == "exit":
                if frame.get("timed_out"):
                    return 124
                return frame["code"] if frame["code"] is not None else 128
            elif kind == "error":
                raise FleetError(f"node: {frame['message']}")
            else:
                raise FleetError(f"unexpected exec frame {kind}")
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats", required=True, help="NATS server URL")
    p.add_argument("--namespace", default="fleet")
    p.add_argument("--workspace", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--claim-id", default=None)
    p.add_argument("--lease-ms", type=int, default=300_000)
    p.add_argument("--signer-file", required=True, help="the daemon's seal.ed25519.pub")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("argv", nargs="+", help="the command to run on the node")
    args = p.parse_args()

    with open(args.signer_file) as f:
        trusted_signer = f.read().strip()
    claim_id = args.claim_id or "py-" + secrets.token_hex(8)
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())

    nc = await nats.connect(args.nats)
    try:
        grant = await claim(nc, args, claim_id, recipient, args.timeout)
        bundle = open_credentials(
            grant["credentials"], claim_id, recipient, identity, trusted_signer
        )
        print(
            json.dumps({"claim_id": claim_id, "node": grant["node"], "endpoint": grant["endpoint"]}),
            file=sys.stderr,
        )
        try:
            code = await run_on_node(bundle, args.argv, args.timeout)
        finally:
            await release(nc, args, claim_id, args.timeout)
        print(json.dumps({"released": claim_id, "exit": code}), file=sys.stderr)
        return code
    finally:
        await nc.close()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except FleetError as e:
        print(f"fleet_claim: {e}", file=sys.stderr)
        sys.exit(3)
