"""What tuneful knows about a model, read from the model itself: how its head turns hidden states into logits and
losses, which batch layouts keep examples apart in it, what LoRA targets. Imports torch and transformers only."""
