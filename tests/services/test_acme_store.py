"""The ACME keys and certificates in the data dir (gate.services.acme.store): made on the
node, 0600, written atomically, read back only when whole and consistent."""

from __future__ import annotations

import stat

from gate.services.acme.store import ACME_DIR, account_key, load_issued, new_key_pem, save_issued
from gate.services.http.tls import _write_self_signed

NAME = "n.relay.test"


def a_chain(tmp_path, name: str) -> tuple[bytes, bytes]:
    """A key and a certificate for `name` (self-signed: the store checks the pairing and
    the name, not who signed it)."""
    _write_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", [name])
    return (tmp_path / "k.pem").read_bytes(), (tmp_path / "c.pem").read_bytes()


def test_the_account_key_is_made_once_and_kept_0600(tmp_path):
    first = account_key(tmp_path / "data")
    second = account_key(tmp_path / "data")
    assert first.private_numbers() == second.private_numbers()
    acme_dir = tmp_path / "data" / ACME_DIR
    assert stat.S_IMODE(acme_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((acme_dir / "account-key.pem").stat().st_mode) == 0o600


def test_a_stored_certificate_reads_back_with_its_dates(tmp_path):
    key_pem, chain_pem = a_chain(tmp_path, NAME)
    issued = save_issued(tmp_path / "data", NAME, key_pem, chain_pem)
    assert stat.S_IMODE(issued.path.stat().st_mode) == 0o600
    again = load_issued(tmp_path / "data", NAME)
    assert again == issued
    assert issued.not_before < issued.not_after
    assert 360 < issued.days_left() <= 366
    assert not list(issued.path.parent.glob(".*tmp*"))  # the atomic write left no temp file


def test_what_does_not_match_is_not_served(tmp_path):
    data = tmp_path / "data"
    assert load_issued(data, NAME) is None  # none yet
    key_pem, chain_pem = a_chain(tmp_path, NAME)
    # Another name's certificate, or a key that is not the certificate's: refused.
    (tmp_path / "o").mkdir()
    other_key, other_chain = a_chain(tmp_path / "o", "other.relay.test")
    save_path = data / ACME_DIR / f"{NAME}.pem"
    save_issued(data, NAME, key_pem, chain_pem)
    save_path.write_bytes(new_key_pem() + chain_pem)
    assert load_issued(data, NAME) is None
    save_path.write_bytes(other_key + other_chain)
    assert load_issued(data, NAME) is None
    save_path.write_bytes(b"garbage")
    assert load_issued(data, NAME) is None
