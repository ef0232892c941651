"""Fleet mode: etcd leases and the per-cycle fleet step."""
