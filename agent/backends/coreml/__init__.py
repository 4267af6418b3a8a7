"""Core ML export (``.mlpackage``): builder, structural check, prediction seam (coremltools)."""
