"""One folder per backend: what it takes to build and run a network with it."""
