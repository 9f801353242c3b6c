"""Bottom layer: settings, errors, Redis, the conversation log, ledgers and the document catalog."""
