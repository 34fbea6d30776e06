"""The SFT trainer: conversations (causal or encoder-decoder), packing, the token-normalised loss.
Floor 4: may import train, preference, infer and below; never another trainer."""
