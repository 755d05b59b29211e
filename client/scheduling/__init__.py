"""Scheduling across hosts: Kubernetes node labels from capabilities, and placement over many agents."""
