"""The relay (`gate relay serve`): public HTTPS to nodes that open no port.

A browser's TLS connection to `<node-id>.<domain>` arrives on the relay's TCP port; the
relay reads the ClientHello only far enough to find the SNI (gate.protocol.sni), and
passes every byte, unchanged, to that node over an iroh stream (tls_proxy, spec §7.4),
on the connection the node itself opened to register. The node ends TLS with its own
key: the relay never sees plaintext. Modules: the service that binds the endpoint and
the TCP port (`service`), names and their activation in SQLite (`registry`), the
RelayControl server where nodes register (`control`), the TCP front (`front`) and the
copy both ways (`splice`); the RelayControl stream both ends use (`control_stream`).
"""
