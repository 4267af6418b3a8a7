"""TFLite / LiteRT: builder and runtime."""
