"""What a guest boots from: the GuestImage values every loader produces, and the built-in payloads."""
