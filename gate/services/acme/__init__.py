"""Certificates from an ACME CA (RFC 8555) for the node's relay names: the keys and
chains in the data dir (`store`), the CA's protocol through certbot's `acme` library
(`session`, blocking), and issuance and renewal with backoff (`issuer`, trio), the DNS-01
challenge published by the relay (spec §6)."""
