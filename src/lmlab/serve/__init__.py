"""`lmlab serve`: an OpenAI-compatible server with continuous batching and a sampling playground."""
