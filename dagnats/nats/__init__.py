"""Transport and storage: NATS names, connections, the JetStream store, the embedded server."""
