"""Every conformance case, one module per part of spec/protocol.md; importing this
package registers them all (gate.conformance.registry.CASES)."""

from gate.conformance.cases import (  # noqa: F401  (imported to register their cases)
    framing,
    http_proxy,
    messages,
    node_control,
    preamble,
    relay_control,
    tls_proxy,
)
