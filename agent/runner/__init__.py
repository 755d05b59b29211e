"""The per-VM runner: a process of its own that owns one VM's KVM fds, vCPU threads and devices."""
