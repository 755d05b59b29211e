"""Guest platforms: the declared request, the host's measured truth, resolution and per-architecture application."""
