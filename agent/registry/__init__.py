"""The VM registry: VM records and their state on disk, the lifecycle table, the event bus, the controller that
decides every request, and the agent's link to its runners."""
