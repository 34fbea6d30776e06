"""Online RL: GRPO and online DPO over sampled groups, reward sources, rollouts.
Floor 4: may import train, preference, infer and below; never another trainer."""
