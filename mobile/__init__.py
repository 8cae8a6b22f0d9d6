"""TFLite conversion, Android metadata and verification on LiteRT for tfprod models."""
