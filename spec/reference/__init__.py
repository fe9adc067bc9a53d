"""An independent Gate node, written from spec/protocol.md alone.

It shares no code with `gate` (tests/test_reference_node.py checks its imports): the
wire format is in `wire` (sans-IO), the node in `node` (iroh on asyncio, httpx for the
upstream), the command line in `__main__`. See README.md next to this file.
"""
