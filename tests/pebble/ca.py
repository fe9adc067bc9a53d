"""pebble (Let's Encrypt's RFC 8555 test CA) and pebble-challtestsrv (its DNS, run by
tests.pebble.challtestsrv), from the system packages (scripts/system-deps.sh), on
loopback random ports, for the tests and bench/relay.py.

pebble serves its ACME directory over HTTPS with a certificate given in its config: a
CA made here issues it, and `ca_bundle` is that CA's PEM (the node's
`tls.acme_ca_bundle`). The roots pebble issues under are made anew at each start and
read from its management port (`root_pem`). pebble resolves `_acme-challenge` TXT
records through challtestsrv (`-dnsserver`), whose management API (`challtestsrv_url`)
the relay's `challtestsrv` DNS backend, or a test, sets them with. Validation is real
(`PEBBLE_VA_ALWAYS_VALID=0`) and immediate (`PEBBLE_VA_NOSLEEP=1`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.local_ca import LocalCA
from tests.pebble.challtestsrv import Challtestsrv

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
_START_TIMEOUT = 20.0


def have_pebble() -> bool:
    return Path(PEBBLE).exists() and shutil.which("pebble-challtestsrv") is not None


def free_port() -> int:
    """A loopback TCP port free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pebble:
    """Both programs; `start`, `stop_ca`/`start_ca` (pebble alone, same ports), `close`."""

    def __init__(
        self, workdir: Path, *, validity_s: int = 0, nonce_reject: int = 0, va_sleep_s: int = 0
    ) -> None:
        """`validity_s`: the certificates' lifetime (pebble's default: 5 years).
        `nonce_reject`: the percentage of good nonces refused (badNonce). `va_sleep_s`:
        validation waits up to that long (random) instead of not at all."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.validity_s = validity_s
        self.nonce_reject = nonce_reject
        self.va_sleep_s = va_sleep_s
        # pebble serves its ACME directory for 127.0.0.1 (and localhost) under a CA of ours
        ca = LocalCA("pebble test serving CA")
        cert_file, key_file = ca.issue(["localhost", "127.0.0.1"], workdir, stem="pebble")
        self.ca_bundle = workdir / "pebble-serving-ca.pem"
        self.ca_bundle.write_text(ca.pem())
        self.acme_port, self.management_port = free_port(), free_port()
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert_file),
            "privateKey": str(key_file),
            "httpPort": free_port(),  # unused: DNS-01 only
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity_s:
            config["certificateValidityPeriod"] = validity_s
        self.config_file = workdir / "pebble-config.json"
        self.config_file.write_text(json.dumps({"pebble": config}))
        self.directory_url = f"https://127.0.0.1:{self.acme_port}/dir"
        self.dns: Challtestsrv | None = None
        self.challtestsrv_url = ""
        self._pebble: subprocess.Popen[bytes] | None = None
        self._context = ssl.create_default_context(cadata=ca.pem())

    def start(self) -> Pebble:
        self.dns = Challtestsrv().start()
        self.challtestsrv_url = self.dns.url
        self.start_ca()
        return self

    def start_ca(self, dns_address: str = "") -> None:
        """pebble, asking `dns_address` (default: this harness's challtestsrv)."""
        assert self.dns is not None, "start() first"
        env = {
            **os.environ,
            **(
                {"PEBBLE_VA_SLEEPTIME": str(self.va_sleep_s)}
                if self.va_sleep_s
                else {"PEBBLE_VA_NOSLEEP": "1"}
            ),
            "PEBBLE_VA_ALWAYS_VALID": "0",
            "PEBBLE_AUTHZREUSE": "0",  # every order asks for its challenge
            "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject),
        }
        command = [PEBBLE, "-config", str(self.config_file)]
        with (self.workdir / "pebble.log").open("ab") as log:  # the child keeps a copy
            self._pebble = subprocess.Popen(
                [*command, "-dnsserver", dns_address or self.dns.dns_address],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait(lambda: self._get(self.directory_url))

    def stop_ca(self) -> None:
        if self._pebble is not None:
            self._pebble.terminate()
            try:
                self._pebble.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._pebble.kill()
                self._pebble.wait(timeout=10)
            self._pebble = None

    def close(self) -> None:
        self.stop_ca()
        if self.dns is not None:
            self.dns.close()
            self.dns = None

    def log(self) -> str:
        return (self.workdir / "pebble.log").read_text(errors="replace")

    def root_pem(self) -> str:
        """The root pebble issues under now (new at each start of pebble)."""
        body = self._get(f"https://127.0.0.1:{self.management_port}/roots/0")
        assert body is not None, "pebble's management port did not answer"
        return body.decode()

    def set_txt(self, host: str, value: str) -> None:
        """What a relay's challtestsrv backend does (for tests of the node's half alone)."""
        self._post("/set-txt", {"host": _fqdn(host), "value": value})

    def clear_txt(self, host: str) -> None:
        self._post("/clear-txt", {"host": _fqdn(host)})

    def _post(self, path: str, body: dict[str, str]) -> None:
        request = urllib.request.Request(
            self.challtestsrv_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status

    def _get(self, url: str, plain: bool = False) -> bytes | None:
        try:
            context = None if plain else self._context
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                return response.read()
        except urllib.error.HTTPError as exc:  # an answer all the same: it listens
            return exc.read() or b"-"
        except OSError:
            return None

    def _wait(self, ready) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if ready() is not None:
                return
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"pebble did not start: {self.log()[-2000:]}")


def _fqdn(host: str) -> str:
    return host if host.endswith(".") else host + "."
