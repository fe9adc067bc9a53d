"""Captures real clients' ClientHellos into spec/vectors/client_hello.json (`captured`).

Run ``python -m spec.capture_client_hello`` from the repository root. It needs the
chromium package (scripts/system-deps.sh installs it). What it records:

- headless Chromium opening ``https://<node-id>.relay.test:<port>/``, every name mapped
  to 127.0.0.1, against a plain TCP socket that keeps the first ClientHello and closes.
  A current Chromium sends ~2 KB: an X25519MLKEM768 key share, GREASE, ECH GREASE.
- Python's ssl module (OpenSSL), TLS 1.3, through memory BIOs: no socket at all.

The bytes differ on every run (randoms, keys, Chromium's shuffled extensions), so the
captures are committed, and spec/generate.py keeps them when it rewrites the file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from spec.examples import NODE_A
from spec.generate import CLIENT_HELLO_FILE, client_hello_vectors

CHROMIUM = "chromium"
HOST = f"{NODE_A}.relay.test"
CAPTURE_TIMEOUT = 30.0  # seconds for Chromium to start and connect


def _whole_record(data: bytes) -> bool:
    return len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big")


def capture_chromium() -> tuple[bytes, str]:
    binary = shutil.which(CHROMIUM)
    if binary is None:
        sys.exit("chromium is not installed (make system-deps)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    with socket.create_server(("127.0.0.1", 0)) as server, tempfile.TemporaryDirectory() as home:
        port = server.getsockname()[1]
        browser = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={home}",
                "--host-resolver-rules=MAP * 127.0.0.1",
                f"https://{HOST}:{port}/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            server.settimeout(CAPTURE_TIMEOUT)
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5.0)
                data = b""
                deadline = time.monotonic() + 5.0
                # Chromium's ClientHello fits one record today; stop at the end of it.
                while not _whole_record(data) and time.monotonic() < deadline:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        finally:
            browser.kill()
            browser.wait(timeout=10)
    return data, version.stdout.strip()


def capture_python_ssl() -> tuple[bytes, str]:
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=HOST)
    # It stops waiting for the ServerHello, with the ClientHello written out.
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read(), f"Python {sys.version.split()[0]} ssl, {ssl.OPENSSL_VERSION}"


def main() -> None:
    captured = []
    for name, capture in (
        ("headless Chromium", capture_chromium),
        ("Python ssl, TLS 1.3", capture_python_ssl),
    ):
        data, source = capture()
        captured.append({"name": name, "source": source, "hex": data.hex(), "server_name": HOST})
        print(f"{name}: {len(data)} bytes from {source}")
    vectors = client_hello_vectors()
    vectors["captured"] = captured
    CLIENT_HELLO_FILE.write_text(json.dumps(vectors, indent=2) + "\n")
    print(f"wrote {CLIENT_HELLO_FILE}")


if __name__ == "__main__":
    main()
