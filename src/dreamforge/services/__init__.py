"""What the API asks of Dream Forge: one service per resource, each over its ports."""
