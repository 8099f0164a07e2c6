"""The FineTuneJob controller: trainer Jobs, their status, and the handlers that drive them."""
