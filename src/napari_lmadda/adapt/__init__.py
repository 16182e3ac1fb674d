"""Adaptation methods on one engine: none, AdaBN, ADDA, LM-ADDA, multi-layer LM-ADDA."""
