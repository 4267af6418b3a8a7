"""The numpy reference runtime (FP32, runs everywhere)."""
