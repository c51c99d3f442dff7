"""A bring-your-own TLS 1.3 PSK endpoint in plain Python 3.13 (``ssl`` PSK callbacks; no portal code).

    python3.13 psk_endpoint.py server --listen 127.0.0.1:4433 --identity KEY_ID --psk-file b.key
    python3.13 psk_endpoint.py client --connect 127.0.0.1:4433 --identity KEY_ID --psk-file a.key

The PSK file holds the key as the ETSI 014 ``key`` field gives it (base64) or as hex, and should be mode 0600:
the key never goes in arguments or the environment. TLS 1.3 only; OpenSSL keeps (EC)DHE with an external
PSK (psk_dhe_ke), X25519 first. The server answers one line per connection and serves ``--count``
connections; the client sends one line and prints what it got and the negotiated protocol and cipher.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import socket
import ssl
import sys


def read_psk(path: str) -> bytes:
    text = open(path).read().strip()  # noqa: SIM115 - a one-off read in a standalone script
    try:
        return bytes.fromhex(text)
    except ValueError:
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error:
            sys.exit("the PSK file must hold the key in hex or base64")


def context(server: bool, identity: str, key: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if server:
        ctx.set_psk_server_callback(lambda offered: key if offered == identity else b"")
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the PSK authenticates both sides
        ctx.set_psk_client_callback(lambda hint: (identity, key))
    return ctx


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--listen", default="127.0.0.1:4433")
    parser.add_argument("--connect", default="127.0.0.1:4433")
    parser.add_argument("--identity", required=True, help="the PSK identity: the session's current key ID")
    parser.add_argument("--psk-file", required=True)
    parser.add_argument("--count", type=int, default=1, help="server: connections to serve")
    parser.add_argument("--message", default="hello over QKD-keyed TLS 1.3")
    args = parser.parse_args()
    if not hasattr(ssl.SSLContext, "set_psk_client_callback"):
        sys.exit("this needs Python 3.13+ (ssl PSK callbacks)")
    ctx = context(args.role == "server", args.identity, read_psk(args.psk_file))
    if args.role == "server":
        with socket.create_server(address(args.listen)) as listener:
            print("listening", flush=True)
            for _ in range(args.count):
                raw, _ = listener.accept()
                try:
                    with ctx.wrap_socket(raw, server_side=True) as conn:
                        line = conn.recv(4096)
                        conn.sendall(b"ok: " + line)
                except ssl.SSLError as exc:
                    print(f"handshake refused: {exc.reason}", flush=True)
        return
    with socket.create_connection(address(args.connect), timeout=10) as raw, ctx.wrap_socket(raw) as conn:
        conn.sendall(args.message.encode() + b"\n")
        print(conn.recv(4096).decode().strip())
        print(f"protocol {conn.version()} cipher {conn.cipher()[0]}")


if __name__ == "__main__":
    main()
