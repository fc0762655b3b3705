"""Hugging Face interchange: key and config maps, HF folders in and out (convert), checkpoint -> HF folder
and its CLI (export)."""
