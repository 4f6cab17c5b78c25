"""Job events: the durable log in the database and the notifier that wakes streams."""
