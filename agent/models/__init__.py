"""The model store: source -> build -> calibrate -> verify -> cached artifact + manifest."""
