"""The control plane: JSON-RPC and live events (`rpc`), what it may ask of a node
(`node_api`: the ControlledNode protocol), the event bus (`events`) and the web UI's
files (`web_ui`).

Nothing is re-exported here: the gateway and the peers import `events` alone, and a
package import would load the RPC service (and the config it edits) with it.
"""
