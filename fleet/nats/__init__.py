"""NATS and JetStream: the connection session, the topology, KV buckets, an embedded server."""
