"""Export: GGUF for llama.cpp and an Ollama Modelfile from a trained model folder.
Floor 4: may import infer, models, tokenization, templates."""
