"""What the CLI prints, in the functions that shape it (no daemon needed)."""

from gate.cli._common import p2p_addresses

NODE = "w4z2wxgvny7ioaeqikmlsbxwsujnpxaklk7rtdv7kv7sirnzfj4q"


def test_each_p2p_address_is_one_node_id_at_ip_port():
    # As the node reports where it listens: one node id, then every address.
    assert p2p_addresses(f"{NODE}@192.168.1.20:41145,[::1]:41145") == [
        f"{NODE}@192.168.1.20:41145",
        f"{NODE}@[::1]:41145",
    ]
    assert p2p_addresses(f"{NODE}@127.0.0.1:41145") == [f"{NODE}@127.0.0.1:41145"]
    assert p2p_addresses("") == []  # P2P not started
