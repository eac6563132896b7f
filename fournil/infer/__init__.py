"""Infer stage: generation, chat, translation, quantisation, GGUF and the server (being built)."""
