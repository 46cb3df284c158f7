"""Keep a replica's inter-deployment gRPC port on loopback when the node itself is on loopback.

Ray Serve 2.60 starts a gRPC server in every replica on "[::]:0" (all interfaces), with no option to
bind it elsewhere (ray-project/ray#64544). The embedded cluster's nodes are 127.0.0.1, so nothing may
listen beyond it: the replica's constructor calls `keep_grpc_on_loopback()`, which runs before Serve
opens that port (Serve opens it once the user constructor has returned). On a real cluster (--address,
a routable node address) the port is left as Ray binds it, since other nodes call it.
"""

from __future__ import annotations

LOOPBACK = ("127.0.0.1", "::1")


def keep_grpc_on_loopback() -> bool:
    """Bind this replica's gRPC server to the node's loopback address; True when it applied."""
    import ray
    from ray.serve._private import replica

    node = ray.util.get_node_ip_address()
    add_port = getattr(replica, "add_port_to_grpc_server", None)  # another Ray may bind otherwise: leave it
    if node not in LOOPBACK or add_port is None or getattr(replica, "_peterrec_loopback", False):
        return node in LOOPBACK and add_port is not None

    def add_port_on_loopback(server, address: str):
        host = "[::1]" if node == "::1" else node
        return add_port(server, address.replace("[::]", host, 1) if address.startswith("[::]:") else address)

    replica.add_port_to_grpc_server = add_port_on_loopback
    replica._peterrec_loopback = True
    return True
