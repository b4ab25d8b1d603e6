"""Pure arithmetic about models: parameters, FLOPs, memory (no torch import)."""
