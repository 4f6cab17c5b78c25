"""Where images go: storage adapters, keys, signed URLs and PNG receipts."""
