"""Post-training: SFT, reward model, DPO and RL, each one module with its CLI verb."""
